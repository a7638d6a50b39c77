#!/usr/bin/env bash
# The quality tables (docs/results, rendered from docs/results/data): every method and LaME ablation trained on the digits benchmark,
# from scratch and from a generative pre-trained backbone, evaluated on all 840 eval queries.
#   SEEDS="0 1 2" bash scripts/quality/quality_runs.sh [NAME ...]      (default: all rows, seed 0)
# Each run writes ROOT/NAME/seedS/ (checkpoint + eval.json); runs already done are skipped,
# interrupted ones resume (--resume), so the script can be re-run after a kill.
# Then: python scripts/quality/quality_table.py ROOT   prints mean ± sd over seeds.
#
# Rows:
#   from scratch: lame discriminative cot latent, LaME ablations k2 k4 k16 no-mask no-decoder
#                 no-diversity one-stage
#   lm:           generative pre-training (--method lm: next-token loss on rationale + answer,
#                 the whole budget in the joint stage); its check is lame-eval --generate
#                 GEN_N -> generate.json (exact match), not retrieval.
#   gen-*:        gen-lame gen-discriminative gen-cot gen-latent gen-no-mask gen-no-decoder
#                 gen-k2: the same methods (and LaME ablations) with --init-from the same
#                 seed's lm checkpoint (its backbone tensors copied into a fresh model); the
#                 lm run of that seed is made first if missing.
#   matryoshka:   LaME with --matryoshka $MATRYOSHKA (default 32,64,128), gen-matryoshka
#                 the same from the lm checkpoint; every row's eval scores each of those
#                 sizes too (lame-eval --dimensions: by_dimension in eval.json).
#   variants:     gen-w-rec2 (reconstruction weight 2), gen-k4, gen-warmup40 (40 % warm-up):
#                 LaME variants from the lm checkpoint, to be chosen on the validation split.
#   *-long:       gen-lame-long gen-discriminative-long: LONG_STEPS (default 1000) steps
#                 from the lm checkpoint, for the retrieval side to learn to read too.
#   decoders:     gen-lame-rows (LaME from the lm checkpoint, reconstruction on the first
#                 DECODER_ROWS rows of each batch) and gen-lame-smollm2 (the same with the
#                 pretrained SmolLM2-135M as latent decoder, --latent-decoder DECODER_DIR,
#                 frozen; made with python -m lame.decoders.directories smollm2 DECODER_DIR if missing).
#   wall-*:       wall-discriminative wall-cot wall-latent: the from-scratch method given
#                 LaME's training wall time instead of its step count: steps = the method's
#                 steps x (LaME's training seconds / the method's), both read from the same
#                 seed's metrics.jsonl (steps_per_s); the lame and METHOD rows of that seed
#                 are made first if missing. Meaningful only on an otherwise idle machine.
#
# Budget variables (each run records its own wall time as train_eval_seconds in eval.json):
#   STEPS           contrastive steps per row (default: the preset's, small = 1,200 at batch 64)
#   PRETRAIN_STEPS  lm steps per seed (default: STEPS, else 600)
#   BATCH           batch size (default: the preset's)
#   GEN_N           eval queries the lm check generates for (default 200)
#   PRESET          model/training preset (default small); THREADS torch threads (default 2)
#   SEEDS           seeds, e.g. "0 1 2" (>= 3 for the table's mean ± sd)
#   DATA, ROOT      dataset (built if missing) and output root; a dataset with val.jsonl
#                   (lame-data digits --val-per-task) also gets val.json per run
#   MATRYOSHKA      sizes of the matryoshka rows and of every eval's by_dimension
# Rough cost on 2 cores: a row's wall time scales with STEPS x BATCH; run one row with a small
# STEPS first and read its train_eval_seconds to size the table.
set -euo pipefail
DATA=${DATA:-data/digits}
ROOT=${ROOT:-runs/quality}
THREADS=${THREADS:-2}
SEEDS=${SEEDS:-0}
STEPS=${STEPS:-}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-${STEPS:-600}}
BATCH=${BATCH:-}
GEN_N=${GEN_N:-200}
MATRYOSHKA=${MATRYOSHKA:-32,64,128}
LONG_STEPS=${LONG_STEPS:-1000}
DECODER_ROWS=${DECODER_ROWS:-8}
DECODER_DIR=${DECODER_DIR:-runs/decoders/smollm2-135m}
PRESET=${PRESET:-small}
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
  [lm]="--method lm"
  [gen-lame]="--method lame"
  [gen-discriminative]="--method discriminative"
  [gen-cot]="--method cot"
  [gen-latent]="--method latent"
  [gen-no-mask]="--method lame --no-bottleneck-mask"
  [gen-no-decoder]="--method lame --w-reconstruction 0"
  [gen-k2]="--method lame --reason-tokens 2"
  [matryoshka]="--matryoshka $MATRYOSHKA"
  [gen-matryoshka]="--method lame --matryoshka $MATRYOSHKA"
  [gen-w-rec2]="--method lame --w-reconstruction 2"
  [gen-k4]="--method lame --reason-tokens 4"
  [gen-warmup40]="--method lame --warmup-fraction 0.4"
  [gen-lame-long]="--method lame --max-steps $LONG_STEPS"
  [gen-discriminative-long]="--method discriminative --max-steps $LONG_STEPS"
  [gen-lame-rows]="--method lame --decoder-rows $DECODER_ROWS"
  [gen-lame-smollm2]="--method lame --decoder-rows $DECODER_ROWS --latent-decoder $DECODER_DIR"
  [wall-discriminative]="--method discriminative"
  [wall-cot]="--method cot"
  [wall-latent]="--method latent"
)
ORDER=(lame discriminative cot latent k2 k4 k16 no-mask no-decoder no-diversity one-stage
       lm gen-lame gen-discriminative gen-cot gen-latent gen-no-mask gen-no-decoder gen-k2
       matryoshka gen-matryoshka gen-w-rec2 gen-k4 gen-warmup40 gen-lame-long
       gen-discriminative-long gen-lame-rows gen-lame-smollm2
       wall-discriminative wall-cot wall-latent)
[ -f "$DATA/train.jsonl" ] || lame-data digits "$DATA"
if [[ " ${*:-${ORDER[*]}} " == *" gen-lame-smollm2 "* ]] && [ ! -f "$DECODER_DIR/config.json" ]; then
  python -m lame.decoders.directories smollm2 "$DECODER_DIR"
fi

finish() {  # finish OUT SECONDS: add the wall time to OUT/NAME.tmp.json, then publish NAME.json
  python - "$1" "$2" "$3" <<'PY'
import json, os, sys
out, seconds, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
result = json.load(open(f"{out}/{name}.tmp.json"))
result["train_eval_seconds"] = seconds  # wall time of this invocation (shared CPU)
json.dump(result, open(f"{out}/{name}.tmp.json", "w"), indent=1)
os.replace(f"{out}/{name}.tmp.json", f"{out}/{name}.json")
PY
}

train() {  # train NAME SEED STEPS EXTRA...: one resumable lame-train run
  local name=$1 seed=$2 steps=$3 out="$ROOT/$1/seed$2"
  shift 3
  # shellcheck disable=SC2086
  lame-train --data "$DATA" --out "$out" --preset "$PRESET" --eval-every 0 \
    --threads "$THREADS" --seed "$seed" ${steps:+--max-steps "$steps"} ${BATCH:+--batch-size "$BATCH"} \
    --no-progress --no-final-eval ${ARGS[$name]} "$@" $( [ -d "$out" ] && echo --resume ) > /dev/null
}

pretrain() {  # pretrain SEED: the lm run of SEED and its generation check
  local seed=$1 out="$ROOT/lm/seed$1"
  [ -f "$out/generate.json" ] && return 0
  echo "== [$(date +%T)] lm seed $seed: lame-train --method lm ($PRETRAIN_STEPS steps)" >&2
  local start=$SECONDS
  train lm "$seed" "$PRETRAIN_STEPS"
  lame-eval --ckpt "$out" --data "$DATA" --generate "$GEN_N" --no-progress \
    --out "$out/generate.tmp.json" > /dev/null
  finish "$out" $((SECONDS - start)) generate
}

wall_steps() {  # wall_steps REF_RUN RUN: RUN's steps scaled to REF_RUN's training seconds
  python - "$1" "$2" <<'PY'
import json, sys
def seconds_and_steps(run):
    every = json.load(open(f"{run}/train_config.json"))["log_every"]
    logs = [json.loads(line) for line in open(f"{run}/metrics.jsonl") if line.strip()]
    timed = [m for m in logs if m.get("steps_per_s")]
    # The trainer logs steps_per_s = min(log_every, step) / seconds since its last log.
    seconds = sum(min(every, m["step"]) / m["steps_per_s"] for m in timed)
    return seconds, max(m["step"] for m in timed)
ref_seconds, _ = seconds_and_steps(sys.argv[1])
seconds, steps = seconds_and_steps(sys.argv[2])
print(max(1, round(steps * ref_seconds / seconds)))
PY
}

single() {  # single NAME SEED: make a plain row's run of SEED if it is missing
  SEEDS=$2 bash "$0" "$1"
}

for name in "${@:-${ORDER[@]}}"; do
  [ -n "${ARGS[$name]+x}" ] || { echo "unknown row $name; rows: ${ORDER[*]}" >&2; exit 2; }
  for seed in $SEEDS; do
    if [ "$name" = lm ]; then pretrain "$seed"; continue; fi
    out="$ROOT/$name/seed$seed"
    [ -f "$out/eval.json" ] && { echo "== $name seed $seed: done already" >&2; continue; }
    init=()
    steps=$STEPS
    if [[ $name == gen-* ]]; then
      pretrain "$seed"
      init=(--init-from "$ROOT/lm/seed$seed")
    elif [[ $name == wall-* ]]; then
      base=${name#wall-}
      single lame "$seed"
      single "$base" "$seed"
      steps=$(wall_steps "$ROOT/lame/seed$seed" "$ROOT/$base/seed$seed")
    fi
    echo "== [$(date +%T)] $name seed $seed: lame-train ${ARGS[$name]} ${init[*]}" \
         "${steps:+--max-steps $steps}" >&2
    start=$SECONDS
    train "$name" "$seed" "$steps" "${init[@]}"
    if [ -f "$DATA/val.jsonl" ]; then  # the split variants are chosen on (never eval)
      lame-eval --ckpt "$out" --data "$DATA" --split val --no-progress \
        --out "$out/val.tmp.json" > /dev/null
      mv "$out/val.tmp.json" "$out/val.json"
    fi
    lame-eval --ckpt "$out" --data "$DATA" --no-progress --dimensions "$MATRYOSHKA" \
      --out "$out/eval.tmp.json" > /dev/null
    finish "$out" $((SECONDS - start)) eval
  done
done
