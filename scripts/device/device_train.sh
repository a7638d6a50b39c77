#!/usr/bin/env bash
# The prepared GPU training run for a lent H100/H200 (the device tool; see its README first):
# the Qwen2-VL-2B-sized `2b` preset with random weights (no hub), bf16 autocast with float32
# master weights, real `Trainer._step`s on a synthetic image/caption set (batch 16, one hard
# negative each, so 48 embeddings a step):
#   (a) gc    full fine-tuning with gradient checkpointing
#   (b) lora  LoRA rank 8 on q/v of the language model (latent tokens, heads trained fully)
#   (c) gc+chunk  (a) with GradCache chunks of 4 rows
# 2 untimed + 6 timed steps each; a few minutes in all. Writes under $OUT: gpu.txt,
# train_throughput.{json,png,log} (steps/s, samples/s, peak GPU memory per mode).
#   device run:  bash scripts/device/device_train.sh            (OUT is set by the device tool)
#   by hand:     OUT=runs/device bash scripts/device/device_train.sh
#   CPU smoke:   PRESET=tiny DEVICE=cpu PRECISION=fp32 OUT=runs/smoke bash scripts/device/device_train.sh
# LoRA needs peft (+ accelerate); a bare device image may lack them: prepare a site folder
# here and carry it (carry: ["runs/device_site"]):
#   pip install --no-deps --target runs/device_site peft==0.21.2 accelerate
# Without it the lora mode is recorded as failed in the JSON and the others still run.
set -euo pipefail
OUT=${OUT:-runs/device}
PRESET=${PRESET:-2b}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
MODES=${MODES:-gc,lora,gc+chunk}
mkdir -p "$OUT"
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
if [ "$DEVICE" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
$PY -c "import torch, transformers; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
$PY -c "import peft; print('peft', peft.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt" || true
timeout 480 $PY scripts/bench/train_throughput.py --preset "$PRESET" --device "$DEVICE" \
  --precision "$PRECISION" --modes "$MODES" --batch-size "${BATCH:-16}" --chunk-size 4 \
  --lora-rank 8 --warmup-steps 2 --steps "${STEPS:-6}" --out "$OUT" \
  2>&1 | tee "$OUT/train_throughput.log"
