#!/usr/bin/env bash
# Probe the quality table's checkpoints (why LaME does or does not win):
#   SEEDS="0 1 2" bash scripts/probes/probe_runs.sh [ROW ...]   (default: lame gen-lame gen-no-mask
#                                                         gen-discriminative discriminative)
# Writes ROOT/ROW/seedS/probe.json with scripts/probes/probe_latents.py (decoder reconstruction from
# the K states, ridge probes of the digits' sum; the ridge strength is chosen on a validation
# split of training rows, never on the eval split); probes already made are skipped.
# DATA, ROOT as in quality_runs.sh; PROBE_ROWS training rows sampled per probe (default 600).
# Then: python scripts/quality/quality_table.py ROOT prints the probe table under the quality table.
set -euo pipefail
DATA=${DATA:-data/digits}
ROOT=${ROOT:-runs/quality}
SEEDS=${SEEDS:-0 1 2}
SAMPLED_ROWS=${PROBE_ROWS:-600}
DEFAULT_ROWS=(lame gen-lame gen-no-mask gen-discriminative discriminative)
for name in "${@:-${DEFAULT_ROWS[@]}}"; do
  for seed in $SEEDS; do
    run="$ROOT/$name/seed$seed"
    [ -f "$run/eval.json" ] || { echo "== $run: no finished run, skipped" >&2; continue; }
    [ -f "$run/probe.json" ] && continue
    echo "== [$(date +%T)] probe $run" >&2
    python "$(dirname "$0")/probe_latents.py" --ckpt "$run" --data "$DATA" --rows "$SAMPLED_ROWS" \
      --seed "$seed" --out "$run/probe.json" > /dev/null
  done
done
