"""Retrieval evaluation: hit@1 and NDCG@k per task, with ties counted against the model.

``encode`` is any callable ``(texts, images, batch_size) -> float32 [N, D]``: a
``LameModel.encode`` or the runtime's ``Embedder.encode`` score through the same code.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np

from lame.data.dataset import EvalRow, Item
from lame_runtime.preprocess import format_query

Encode = Callable[..., np.ndarray]
KS = (5, 10)


def rank_of_positive(scores: np.ndarray, label: int) -> int:
    """1-based pessimistic rank: every negative scoring >= the positive ranks above it, so a
    collapsed model (all scores equal, or NaN) never gets credit for the positive's slot."""
    positive = scores[label]
    if not np.isfinite(positive):
        return len(scores)
    negatives = np.delete(scores, label)
    return 1 + int(np.sum(~(negatives < positive)))  # NaN negatives count as beating it


def row_metrics(scores: np.ndarray, label: int) -> dict[str, float]:
    rank = rank_of_positive(scores, label)
    metrics = {"hit@1": float(rank == 1)}
    for k in KS:  # one relevant item: ideal DCG is 1
        metrics[f"ndcg@{k}"] = 1.0 / math.log2(rank + 1) if rank <= k else 0.0
    return metrics


def embed_unique(encode: Encode, items: Sequence[Item], batch_size: int) -> dict[str, np.ndarray]:
    """Embed each distinct item once (eval rows share many candidates)."""
    unique = list({item.key(): item for item in items}.values())
    vectors = encode(texts=[i.text for i in unique], images=[i.image for i in unique],
                     batch_size=batch_size)
    return {item.key(): vec for item, vec in zip(unique, vectors)}


def score_rows(encode: Encode, rows: Sequence[EvalRow], batch_size: int = 64) -> list[np.ndarray]:
    queries = [Item(format_query(r.query.text, r.instruction), r.query.image) for r in rows]
    query_vecs = embed_unique(encode, queries, batch_size)
    cand_vecs = embed_unique(encode, [c for r in rows for c in r.candidates], batch_size)
    out = []
    for query, row in zip(queries, rows):
        cands = np.stack([cand_vecs[c.key()] for c in row.candidates])
        out.append(cands @ query_vecs[query.key()])
    return out


def evaluate(encode: Encode, rows: Sequence[EvalRow], batch_size: int = 64) -> dict:
    """-> {"hit@1", "ndcg@5", "ndcg@10", "n", "per_task": {...}, "per_group": {...}} in percent.

    A group is the task name before its first '.', e.g. ``tier2`` for ``tier2.oddsum.i2t``."""
    if not rows:
        raise ValueError("no evaluation rows")
    per_row = [row_metrics(s, r.label) for s, r in zip(score_rows(encode, rows, batch_size), rows)]
    by_task, by_group = defaultdict(list), defaultdict(list)
    for metrics, row in zip(per_row, rows):
        by_task[row.task].append(metrics)
        by_group[row.task.split(".")[0]].append(metrics)
    result = _mean(per_row)
    result["per_task"] = {task: _mean(m) for task, m in sorted(by_task.items())}
    result["per_group"] = {group: _mean(m) for group, m in sorted(by_group.items())}
    return result


def _mean(metrics: list[dict[str, float]]) -> dict[str, float]:
    keys = metrics[0].keys()
    out = {k: round(100.0 * float(np.mean([m[k] for m in metrics])), 2) for k in keys}
    out["n"] = len(metrics)
    return out


def subsample(rows: Sequence[EvalRow], per_task: int, seed: int = 0) -> list[EvalRow]:
    """At most ``per_task`` rows of each task (seeded), for quick periodic evaluation."""
    by_task = defaultdict(list)
    for row in rows:
        by_task[row.task].append(row)
    rng = np.random.default_rng(seed)
    picked = []
    for task in sorted(by_task):
        group = by_task[task]
        take = rng.permutation(len(group))[:per_task]
        picked.extend(group[i] for i in sorted(take))
    return picked
