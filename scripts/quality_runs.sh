#!/usr/bin/env bash
# The README quality table: every method and LaME ablation trained with the `small` preset's
# budget (1,200 steps, batch 64; STEPS=N to change it) on the digits benchmark, evaluated on
# all 840 eval queries. Usage: SEEDS="0 1 2" bash scripts/quality_runs.sh [NAME ...]
# (default: all rows, seed 0). Each run writes runs/quality/NAME/seedS/ (checkpoint +
# eval.json); runs already done are skipped, interrupted ones resume.
# Then: python scripts/quality_table.py runs/quality  prints mean ± sd over seeds.
set -euo pipefail
DATA=${DATA:-data/digits}
ROOT=${ROOT:-runs/quality}
THREADS=${THREADS:-2}
SEEDS=${SEEDS:-0}
STEPS=${STEPS:-}
declare -A ARGS=(
  [lame]=""
  [discriminative]="--method discriminative"
  [cot]="--method cot"
  [latent]="--method latent"
  [k2]="--reason-tokens 2"
  [k4]="--reason-tokens 4"
  [k16]="--reason-tokens 16"
  [no-mask]="--no-bottleneck-mask"
  [no-decoder]="--w-reconstruction 0"
  [no-diversity]="--w-diversity 0"
  [one-stage]="--warmup-fraction 0"
)
ORDER=(lame discriminative cot latent k2 k4 k16 no-mask no-decoder no-diversity one-stage)
[ -f "$DATA/train.jsonl" ] || lame-data digits "$DATA"
for name in "${@:-${ORDER[@]}}"; do
  [ -n "${ARGS[$name]+x}" ] || { echo "unknown row $name; rows: ${ORDER[*]}" >&2; exit 2; }
  for seed in $SEEDS; do
    out="$ROOT/$name/seed$seed"
    [ -f "$out/eval.json" ] && { echo "== $name seed $seed: done already" >&2; continue; }
    echo "== [$(date +%T)] $name seed $seed: lame-train ${ARGS[$name]}" >&2
    start=$SECONDS
    # shellcheck disable=SC2086
    lame-train --data "$DATA" --out "$out" --preset small --eval-every 0 --threads "$THREADS" \
      --seed "$seed" ${STEPS:+--max-steps "$STEPS"} --no-progress ${ARGS[$name]} \
      $( [ -d "$out" ] && echo --resume )
    lame-eval --ckpt "$out" --data "$DATA" --out "$out/eval.tmp.json" > /dev/null
    python - "$out" $((SECONDS - start)) <<'PY'
import json, os, sys
out, seconds = sys.argv[1], int(sys.argv[2])
result = json.load(open(f"{out}/eval.tmp.json"))
result["train_eval_seconds"] = seconds  # wall time of this invocation (shared CPU)
json.dump(result, open(f"{out}/eval.tmp.json", "w"), indent=1)
os.replace(f"{out}/eval.tmp.json", f"{out}/eval.json")
PY
  done
done
