#!/usr/bin/env bash
# The prepared GPU run for a lent H100/H200 (the device tool; see its README first):
# PyTorch bf16 on the GPU, the Qwen2-VL-2B-sized `2b` preset with random weights, LaME vs CoT
# vs latent vs discriminative at batch 1 and 32, median of 5 rounds. About 3-5 minutes;
# writes gpu.txt, bench_2b_gpu.{json,png,log} under $OUT. Nothing here needs a GPU to exist
# elsewhere: the fast test suite never calls it.
#   device run:  bash scripts/device/device_bench.sh            (OUT is set by the device tool)
#   by hand:     OUT=runs/device bash scripts/device/device_bench.sh
set -euo pipefail
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
# The device image has torch, transformers, tokenizers, onnx and Pillow but not this project,
# and no network: expose the four packages under their import names instead of installing.
site=$(mktemp -d)
ln -s "$PWD/lame" "$site/lame"
ln -s "$PWD/runtime" "$site/lame_runtime"
ln -s "$PWD/export" "$site/lame_export"
ln -s "$PWD/calibration" "$site/lame_calibration"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
timeout 480 $PY -m lame.cli.bench --preset 2b --device cuda --dtype bfloat16 --batches 1,32 \
  --reps 5 --no-deploy --json "$OUT/bench_2b_gpu.json" --plot "$OUT/bench_2b_gpu.png" \
  2>&1 | tee "$OUT/bench_2b_gpu.log"
