#!/usr/bin/env bash
# Does a pretrained backbone help? The lame-small preset, LaME (K=8) vs --reason-tokens 0, two
# seeds each, and the from-scratch tiny preset at the same step budget (the preset's 40 steps
# at batch 16). Needs scripts/install_lame_small.sh. Each run writes runs/small/NAME/ with the
# final full evaluation in metrics.jsonl (stage "final") and seconds per step in the log rows.
# Then: python scripts/lame_small_table.py runs/small
set -euo pipefail
DATA=${DATA:-data/digits}
ROOT=${ROOT:-runs/small}
THREADS=${THREADS:-2}
declare -A ARGS=(
  [lame-s0]="--preset lame-small --seed 0"
  [lame-s1]="--preset lame-small --seed 1"
  [k0-s0]="--preset lame-small --seed 0 --reason-tokens 0"
  [k0-s1]="--preset lame-small --seed 1 --reason-tokens 0"
  [tiny-lame]="--preset tiny --max-steps 40 --batch-size 16"
  [tiny-k0]="--preset tiny --max-steps 40 --batch-size 16 --reason-tokens 0"
)
ORDER=(tiny-lame tiny-k0 lame-s0 k0-s0 lame-s1 k0-s1)
[ -f "$DATA/train.jsonl" ] || lame-data digits "$DATA"
for name in "${@:-${ORDER[@]}}"; do
  [ -n "${ARGS[$name]+x}" ] || { echo "unknown run $name; runs: ${ORDER[*]}" >&2; exit 2; }
  out="$ROOT/$name"
  echo "== [$(date +%T)] $name: lame-train ${ARGS[$name]}" >&2
  # shellcheck disable=SC2086
  lame-train --data "$DATA" --out "$out" --threads "$THREADS" --no-progress ${ARGS[$name]} \
    $( [ -d "$out" ] && echo --resume )
done
