"""Training steps per second, LaME vs the K=0 discriminative baseline, side by side.

    python scripts/bench/bench_train_step.py --data data/digits [--preset small] [--steps 30]

Both models train on the same batches; each round runs one step of every variant (interleaved,
so background load hits them alike); the median round time gives steps/s. Used to size the
"same wall time" comparison in docs/results/0.2.0.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lame.cli.train import build_configs
from lame.data.batching import Collator, batch_indices
from lame.data.dataset import load_train
from lame.model import LameModel
from lame.tokenizer import preprocessor_for
from lame.training.objective import compute_losses
from lame.training.train import set_trainable

VARIANTS = {"lame": {}, "discriminative": {"num_reason_tokens": 0}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--stage", default="joint", choices=["warmup", "joint"])
    args = parser.parse_args(argv)

    rows = load_train(args.data)
    runners = {}
    for name, overrides in VARIANTS.items():
        config, train_cfg = build_configs(args.preset, overrides)
        torch.manual_seed(0)
        model = LameModel(config, preprocessor_for(args.data, config)).train()
        model.preprocessor.image_cache = {}
        params = set_trainable(model, args.stage)
        runners[name] = (
            model,
            torch.optim.AdamW(params, lr=1e-4),
            Collator(model.preprocessor, config.max_answer_tokens, train_cfg.hard_negatives),
            train_cfg.batch_size,
        )
    times = {name: [] for name in runners}
    for step in range(args.steps + 2):
        for name, (model, optimizer, collate, batch_size) in runners.items():
            batch = collate([rows[i] for i in batch_indices(len(rows), batch_size, 0, step)])
            start = time.perf_counter()
            loss = compute_losses(model, batch)["total"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 2:  # first two rounds warm caches
                times[name].append(time.perf_counter() - start)
    result = {name: 1 / statistics.median(t) for name, t in times.items()}
    print(f"{'variant':<16}{'steps/s':>10}")
    for name, rate in result.items():
        print(f"{name:<16}{rate:>10.2f}")
    print(f"lame / discriminative speed: {result['lame'] / result['discriminative']:.2f}x")
    return result


if __name__ == "__main__":
    main()
