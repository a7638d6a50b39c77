#!/usr/bin/env bash
# The 2.4 GB export probe (see scripts/probes/probe_2gb.py): random Qwen2-VL-2B-width weights with
# fewer blocks -> checkpoint -> fp32 + fp16 + int8 + int4 artifact with external data -> load timings.
# Needs ~8 GB of RAM and ~12 GB of disk under WORK; takes minutes on 2 CPU cores.
#
#   scripts/probes/probe_2gb.sh [WORK_DIR] [CALIB_SIZE]
#
# Prints one JSON line per step and writes them all to WORK_DIR/probe_2gb.jsonl.
set -euo pipefail
WORK=${1:-/tmp/lame_probe_2gb}
CALIB=${2:-16}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$WORK"
: > "$WORK/probe_2gb.jsonl"
for step in build export load; do
  echo "== $step" >&2
  python "$HERE/probe_2gb.py" "$step" --work "$WORK" --calib-size "$CALIB" | tee -a "$WORK/probe_2gb.jsonl"
done
python - "$WORK/probe_2gb.jsonl" <<'EOF'
import json, sys
rows = {r["step"]: r for r in map(json.loads, open(sys.argv[1])) if "step" in r}
b, e, l = rows["build"], rows["export"], rows["load"]
gb = e["fp32_weight_gb"]
print(f"\nprobe: {gb} GB fp32 weights, external data: {e['external_data']}, "
      f"calibration samples: {e['calib_size']}")
print(f"build: {b['seconds']} s, peak RSS {b['peak_rss_mb']} MiB")
print(f"export: {e['seconds']} s, peak RSS {e['peak_rss_mb']} MiB "
      f"({e['peak_rss_mb'] / 1024 / (gb / 1.073741824):.2f}x the fp32 weights)")
for s in e["stages"]:
    print(f"  {s['stage']:<48} {s['seconds']:>7} s  peak RSS {s['peak_rss_mb']:>6} MiB")
print("min cosine:", e["min_cosine"], "failures:", e["failures"] or "none")
print("files (MiB):", e["files_mb"])
print(f"Artifact.open + fp32 verification: {l['open_s_without_hash_cache']} s without the hash "
      f"cache, {l['open_s_with_hash_cache']} s with it, {l['open_s_verify_false']} s verify=False")
print("Embedder load + 1 encode:", l["encode"])
EOF
