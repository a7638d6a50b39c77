"""Why does LaME not win? Measure what its K reason states hold.

    python scripts/probes/probe_latents.py --ckpt CKPT --data data/digits [--rows 600] [--out probe.json]

1. **Reconstruction**: the decoder head's teacher-forced token accuracy (and whole-answer exact
   match) from the K reason states, on training rows (seen) and on eval queries (held out;
   the answer is taken from the row as in ``lame-eval --generate``: i2t the positive's text,
   t2i the query's text), also per direction: ``eval_i2t`` is the one that needs the image
   read and reasoned about, ``eval_t2i`` is a copy of the query. Checkpoints without a decoder
   head (K=0, latent, lm) skip it.
2. **Linear probes** of image queries' digits (their sum and their largest digit, from the
   digits benchmark's image index): closed-form ridge regression on standardised features of
   (a) the K reason states (flattened), (b) the [EMBED] state, (c) the last input token's state
   (what the backbone has before any reason token). The ridge strength is chosen on a
   validation split carved from *training* rows; the eval split is only measured (unseen
   images), never used for a choice. Reported: R^2 and accuracy (percent) of the rounded
   prediction, next to ``constant_acc`` (always the fit rows' mean).

Runs in about a minute on a tiny/small checkpoint with --rows 600 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

ALPHAS = tuple(10.0**p for p in range(-2, 5))
# sum and max (tier 1's quantities) and two tier-2 ones: the sum of the odd digits (oddsum)
# and the largest minus the smallest digit (range): multi-step quantities a reasoning state
# should make more linearly readable than the input's last token does.
TARGETS = {
    "sum": sum,
    "max": max,
    "oddsum": lambda d: sum(x for x in d if x % 2),
    "range": lambda d: max(d) - min(d),
}


# ------------------------------------------------------------------ pure parts (tested)
def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (fit, validation) indices of n training rows, seeded."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(round(n * val_fraction)))
    if cut >= n:
        raise ValueError(f"{n} rows are too few to carve a validation split")
    return np.sort(order[cut:]), np.sort(order[:cut])


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> dict[str, np.ndarray]:
    """Closed-form ridge on standardised features: w = (X'X + alpha I)^-1 X'(y - mean)."""
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    z = (x - mean) / std
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return {"mean": mean, "std": std, "w": w, "bias": np.asarray(y.mean())}


def ridge_predict(model: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return ((x - model["mean"]) / model["std"]) @ model["w"] + model["bias"]


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else float("nan")


def probe(
    x_fit, y_fit, x_val, y_val, x_test=None, y_test=None, alphas: Sequence[float] = ALPHAS
) -> dict[str, float]:
    """Pick alpha by validation R^2 (training rows only), refit on fit, score val (and test)."""
    scores = {a: r2(y_val, ridge_predict(ridge_fit(x_fit, y_fit, a), x_val)) for a in alphas}
    alpha = max(scores, key=lambda a: -np.inf if np.isnan(scores[a]) else scores[a])
    model = ridge_fit(x_fit, y_fit, alpha)
    out = {
        "alpha": alpha,
        "val_r2": scores[alpha],
        "val_acc": 100.0 * float(np.mean(np.round(ridge_predict(model, x_val)) == y_val)),
    }
    if x_test is not None and len(x_test):
        pred = ridge_predict(model, x_test)
        out.update(test_r2=r2(y_test, pred), test_acc=100.0 * float(np.mean(np.round(pred) == y_test)))
    return out


def token_accuracy(predicted: np.ndarray, targets: np.ndarray, pad: int) -> dict[str, float]:
    """Teacher-forced token accuracy over non-pad targets, and rows entirely right."""
    real = targets != pad
    right = (predicted == targets) & real
    rows = (right | ~real).all(1)
    return {
        "token_acc": 100.0 * right.sum() / max(real.sum(), 1),
        "answer_exact": 100.0 * rows.mean(),
        "rows": int(len(targets)),
    }


# ------------------------------------------------------------------ model side
def _features(model, items, batch_size: int):
    """-> dict of feature arrays (reason flattened, embed, input) and, with a decoder head,
    the reason states kept as tensors for reconstruction."""
    import torch

    out = {"reason": [], "embed": [], "input": []}
    reason_states = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            part = items[start : start + batch_size]
            feed = model.feed_to_tensors(model.preprocessor([i.text for i in part], [i.image for i in part]))
            result = model(**feed)
            hidden = model.hidden_states(**feed)
            length = feed["input_ids"].shape[1]
            out["reason"].append(result.reason_states.flatten(1).float().numpy())
            out["embed"].append(result.summary_states[:, -1].float().numpy())
            out["input"].append(hidden[:, length - 1].float().numpy())
            reason_states.append(result.reason_states)
    return {k: np.concatenate(v) for k, v in out.items()}, reason_states


def _reconstruction(model, reason_chunks, answers: list[str]) -> dict[str, float]:
    import torch

    from lame.data.batching import Collator
    from lame.data.dataset import Item, TrainRow

    collate = Collator(model.preprocessor, model.config.max_answer_tokens, 0)
    predicted, targets, start = [], [], 0
    with torch.no_grad():
        for states in reason_chunks:
            rows = [
                TrainRow(Item(text="-"), Item(text=a), answer=a) for a in answers[start : start + len(states)]
            ]
            start += len(states)
            inputs, target = collate._answers(rows)
            logits = model.decoder_head(states, inputs)
            predicted.append(logits.argmax(-1).numpy())
            targets.append(target.numpy())
    width = max(t.shape[1] for t in targets)
    pad = model.pad_token_id

    def padded(chunks):
        return np.concatenate(
            [np.pad(c, ((0, 0), (0, width - c.shape[1])), constant_values=pad) for c in chunks]
        )

    return token_accuracy(padded(predicted), padded(targets), pad)


def run(ckpt: str, data: str, rows: int, val_fraction: float, seed: int, batch_size: int) -> dict:
    import lame
    from lame.data.dataset import Item, load_eval, load_train
    from lame.evaluation.generation import case_for, image_digits
    from lame_runtime.inputs.preprocess import format_query

    model = lame.load(ckpt)
    digits = image_digits(data)
    train = load_train(data)
    picked = np.random.default_rng(seed).permutation(len(train))[:rows]
    train = [train[i] for i in picked]
    evals = load_eval(data)
    report: dict = {
        "checkpoint": ckpt,
        "method": model.config.method,
        "K": model.config.num_reason_tokens,
        "train_rows": len(train),
    }

    def query(row):
        return Item(format_query(row.query.text, row.instruction), row.query.image)

    train_x, train_states = _features(model, [query(r) for r in train], batch_size)
    eval_x, eval_states = _features(model, [query(r) for r in evals], batch_size)
    if model.decoder_head is not None:
        cases = [case_for(r) for r in evals]
        report["reconstruction"] = {
            "train_rows_seen": _reconstruction(
                model, train_states, [r.answer or r.target.text or "" for r in train]
            ),
            "eval_queries_held_out": _reconstruction(model, eval_states, [c.reference for c in cases]),
        }
        # By direction: an i2t answer (the true statement about the query image) needs the
        # image read and reasoned about; a t2i reference is the query text itself (a copy).
        import torch

        states = torch.cat(eval_states)
        for direction in ("i2t", "t2i"):
            picked = [i for i, c in enumerate(cases) if c.direction == direction]
            if picked:
                chunks = list(torch.split(states[picked], batch_size))
                report["reconstruction"][f"eval_{direction}"] = _reconstruction(
                    model, chunks, [cases[i].reference for i in picked]
                )
    image_train = [i for i, r in enumerate(train) if r.query.image and _key(r.query.image) in digits]
    image_eval = [i for i, r in enumerate(evals) if r.query.image and _key(r.query.image) in digits]
    if len(image_train) < 10:
        report["probes"] = "skipped: fewer than 10 image queries with known digits"
        return report
    fit, val = split_indices(len(image_train), val_fraction, seed)
    fit, val = np.asarray(image_train)[fit], np.asarray(image_train)[val]
    test = np.asarray(image_eval, dtype=int)
    probes = {}
    for target, reduce in TARGETS.items():
        y_train = np.array(
            [reduce(digits.get(_key(r.query.image), (0,))) if r.query.image else 0 for r in train], float
        )
        y_eval = np.array(
            [reduce(digits.get(_key(r.query.image), (0,))) if r.query.image else 0 for r in evals], float
        )
        # Accuracy of always answering the fit rows' mean: what a probe must beat.
        probes[target] = {
            "constant_acc": 100.0 * float(np.mean(y_eval[test] == np.round(y_train[fit].mean())))
            if len(test)
            else None
        }
        for name in ("reason", "embed", "input"):
            if train_x[name].shape[1] == 0:
                continue
            probes[target][name] = probe(
                train_x[name][fit],
                y_train[fit],
                train_x[name][val],
                y_train[val],
                eval_x[name][test],
                y_eval[test],
            )
    report["probes"] = {"rows": {"fit": len(fit), "validation": len(val), "eval": len(test)}, **probes}
    return report


def _key(path: str) -> str:
    return str(Path(path).resolve())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--rows", type=int, default=600, help="training rows sampled")
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    try:
        report = run(args.ckpt, args.data, args.rows, args.val_fraction, args.seed, args.batch_size)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=1)
    if args.out:
        from lame_runtime.persist import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
