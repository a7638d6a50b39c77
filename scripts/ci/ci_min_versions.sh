#!/usr/bin/env bash
# Jetson's versions: the base install (no extras, no torch) with every dependency of
# pyproject.toml at its declared minimum, in a fresh venv, running the runtime tests
# (those marked `runtime`). Proves the lower bounds JetPack-era devices rely on are true.
#
# Called by .ci/run after the main pytest, with the CI venv active (it has torch: it exports the
# tiny artifact the torch-free tests then serve, passed to them as $LAME_TEST_ARTIFACT).
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. constraints: every base dependency pinned at its declared minimum (name>=X -> name==X)
python - > "$work/constraints.txt" <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)\s*", dep)
    if not match:
        raise SystemExit(f"ci_min_versions: cannot pin {dep!r}: declare it as name>=version")
    print(f"{match[1]}=={match[2]}")
EOF
echo "[min-versions] constraints: $(tr '\n' ' ' < "$work/constraints.txt")"

# 2. a tiny real artifact, exported with the full install
lame-data digits "$work/data" --train-images 64 --eval-per-task 2 --vocab-size 300 >/dev/null
lame-train --data "$work/data" --out "$work/ckpt" --preset tiny --max-steps 4 --batch-size 8 \
    --no-progress >/dev/null
lame-export --ckpt "$work/ckpt" --out "$work/artifact" --fp16 --force >/dev/null

# 3. a fresh venv with the base package only, from a copy of the tree (pip's in-tree build
#    must not leave build/ or *.egg-info behind in the checkout)
mkdir "$work/src"
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work/src"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q -c "$work/constraints.txt" "$work/src" pytest
"$work/venv/bin/python" - <<'EOF'
import importlib.metadata as md, importlib.util, sys
assert importlib.util.find_spec("torch") is None, "the base install must not bring torch"
print("[min-versions] installed:", ", ".join(f"{n} {md.version(n)}" for n in
      ("numpy", "onnxruntime", "tokenizers", "pillow", "click")), "| python", sys.version.split()[0])
EOF

# 4. the runtime tests, torch-free (no conftest: it needs torch)
cd "$work/src"
files=$(grep -rl --include="test_*.py" "pytest.mark.runtime" tests)
LAME_TEST_ARTIFACT="$work/artifact" "$work/venv/bin/python" -m pytest -q --noconftest \
    -p no:cacheprovider -m runtime $files
echo "[min-versions] done in $(( $(date +%s) - started )) s"
