#!/usr/bin/env bash
# The README's main job: build the bundled digits benchmark, train LaME (both stages) with the
# default preset, evaluate, export to ONNX (fp32 + fp16 + int8, parity-gated), index the eval
# images with the torch-free runtime, run three text queries and one image->image query.
# ~8 minutes on 2 CPU cores.
set -euo pipefail
DATA=${DATA:-data/digits}
RUN=${RUN:-runs/lame}
ART=${ART:-runs/lame-onnx}
INDEX=${INDEX:-runs/digits-index}
step() { echo "== [$(date +%T), ${SECONDS}s] $*" >&2; }

step "build the digits benchmark"
[ -f "$DATA/train.jsonl" ] || lame-data digits "$DATA"
step "train (warm-up, then joint)"
lame-train --data "$DATA" --out "$RUN" --preset small ${RESUME:+--resume}
step "evaluate"
lame-eval --ckpt "$RUN" --data "$DATA" --out "$RUN/eval.json" > /dev/null
python - "$RUN/eval.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"digits eval hit@1 {r['hit@1']:.2f}% (chance 2%) | " +
      " | ".join(f"{g} {v['hit@1']:.2f}%" for g, v in r["per_group"].items()))
PY
step "export to ONNX (fp32, fp16, int8) with parity and retrieval gates"
lame-export --ckpt "$RUN" --out "$ART" --fp16 --int8 --calib-data "$DATA"
step "index the eval images (never seen in training) with the torch-free runtime"
lame-search index --model "$ART" --images "$DATA/images" --pattern "eval_*" --out "$INDEX" \
  --force --no-progress
T2I="Find the image that matches the statement."
for query in "the digits add up to 12" "the largest digit is 7" "the odd digits add up to 9"; do
  lame-search query --model "$ART" --index "$INDEX" --instruction "$T2I" "$query" -k 3 --json \
    | python scripts/show_hits.py "$DATA"
done
step "image->image: an eval image finds itself and look-alikes (document instruction)"
EVAL_IMAGES=("$DATA"/images/eval_*)
IMAGE=${EVAL_IMAGES[0]}
lame-search query --model "$ART" --index "$INDEX" --image "$IMAGE" --image-to-image -k 3 \
  --json | python scripts/show_hits.py "$DATA"
step "done"
