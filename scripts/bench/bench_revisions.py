"""One checkpoint exported and served by two revisions of this repository, side by side: the
artifact's files (names and hashes), the vectors, and the throughput (interleaved rounds).

What a change that must not touch existing artifacts is checked with:

    python scripts/bench/bench_revisions.py --base b97941d --ckpt CKPT --data DATA_DIR

The base revision is checked out in a temporary git worktree and imported from there (its
four packages linked under their import names); the working tree is imported the same way,
so both sides run with the same interpreter and packages. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "lame": "lame",
    "lame_export": "export",
    "lame_calibration": "calibration",
    "lame_runtime": "runtime",
}
# Written at export time (provenance): expected to differ between two exports.
VOLATILE_KEYS = ("exported_with", "source_checkpoint")

EXPORT = """
import sys
from lame_export.cli import main
raise SystemExit(main(["--ckpt", sys.argv[1], "--out", sys.argv[2], "--int8", "--calib-data", sys.argv[3]]))
"""
ENCODE = """
import json, sys, time
import numpy as np
from lame_runtime import Embedder, RuntimeOptions
from lame_calibration.build import sample_items
art, data, out, precision, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
items = sample_items(data, 32, seed=1, split="eval")
texts, images = [i[0] for i in items], [i[1] for i in items]
embedder = Embedder(art, precision=precision, options=RuntimeOptions(threads=2))
vectors = embedder.encode(texts, images, batch_size=32)
np.save(out, vectors)
start = time.perf_counter()
for _ in range(rounds):
    embedder.encode(texts, images, batch_size=32)
print(json.dumps({"emb_per_s": rounds * len(texts) / (time.perf_counter() - start)}))
"""


def source_root(tree: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for name, folder in PACKAGES.items():
        link = into / name
        if not link.exists():
            link.symlink_to(tree / folder)
    return into


def run(code: str, root: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "2"}
    # cwd: the root's own folder, so `python -c` does not put this checkout's lame/ first on sys.path.
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, cwd=str(root)
    )
    if done.returncode:
        raise SystemExit(f"failed under {root}:\n{done.stderr[-3000:]}")
    return done.stdout


def file_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "lame_artifact.json":
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    manifest = json.loads((folder / "lame_artifact.json").read_text())
    for key in VOLATILE_KEYS:
        manifest.pop(key, None)
    manifest.pop("files", None)  # hashes of the files, compared above
    out["lame_artifact.json (without provenance and file hashes)"] = hashlib.sha256(
        json.dumps(manifest, sort_keys=True).encode()
    ).hexdigest()[:16]
    return out


def graph_structure(path: Path) -> str:
    """A hash of an ONNX graph without the exporter's per-node metadata (source file and line
    of the PyTorch code that made each node, which any edit to that code moves) and names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]
    model.producer_version = ""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="dataset dir: calibration + eval rows")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="int8")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base_tree = work / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.base],
            check=True,
            capture_output=True,
        )
        try:
            roots = {
                "base": source_root(base_tree, work / "src_base"),
                "head": source_root(ROOT, work / "src_head"),
            }
            arts = {}
            for side, root in roots.items():
                arts[side] = work / f"art_{side}"
                run(EXPORT, root, str(args.ckpt), str(arts[side]), str(args.data))
            hashes = {side: file_hashes(art) for side, art in arts.items()}
            graphs = sorted(p.name for p in arts["head"].glob("*.onnx"))
            structure = {
                name: graph_structure(arts["base"] / name) == graph_structure(arts["head"] / name)
                for name in graphs
            }
            rates: dict[str, list[float]] = {"base": [], "head": []}
            for _ in range(args.repeats):  # interleaved: base, head, base, head, ...
                for side, root in roots.items():
                    line = run(
                        ENCODE,
                        root,
                        str(arts[side]),
                        str(args.data),
                        str(work / f"{side}.npy"),
                        args.precision,
                        str(args.rounds),
                    )
                    rates[side].append(json.loads(line.strip().splitlines()[-1])["emb_per_s"])
            base_vectors, head_vectors = np.load(work / "base.npy"), np.load(work / "head.npy")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
                check=False,
                capture_output=True,
            )
    differing = sorted(
        k
        for k in hashes["base"].keys() | hashes["head"].keys()
        if hashes["base"].get(k) != hashes["head"].get(k)
    )
    median = {side: sorted(values)[len(values) // 2] for side, values in rates.items()}
    print(
        json.dumps(
            {
                "base": args.base,
                "files": sorted(hashes["head"]),
                "differing_files": differing,
                "graphs_equal_without_node_metadata": structure,
                "max_abs_vector_diff": float(np.abs(base_vectors - head_vectors).max()),
                "emb_per_s": rates,
                "head_over_base_median": round(median["head"] / median["base"], 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
