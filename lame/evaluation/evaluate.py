"""Retrieval evaluation: hit@1 and NDCG@k per task, with ties counted against the model.

``encode`` is any callable ``(texts, images, batch_size[, videos]) -> float32 [N, D]``: a
``LameModel.encode`` or the runtime's ``Embedder.encode`` score through the same code.
``encode_target`` (default: ``encode``) embeds the candidates, for methods that treat queries
and candidates differently (the CoT baseline reasons on queries only).

Gains: a row's ``relevance`` list, or 1 for the candidate at ``label`` and 0 elsewhere.
NDCG@k is linear: DCG@k = sum over ranks i <= k of gain_i / log2(i + 1), divided by the DCG
of the gains sorted in decreasing order (the ideal ranking of the row's candidates).
hit@1 is 1 when the top-ranked candidate has a positive gain.

Tie rule (the worst ranking the scores allow, so a collapsed model earns nothing): candidates
are sorted by score, descending; equal scores put the lower gain first; a NaN score of a
zero-gain candidate ranks it above everything, and a non-finite score of a relevant candidate
ranks it below everything.  With one positive this is exactly :func:`rank_of_positive`:
every candidate scoring >= the positive ranks above it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from lame.data.dataset import METRICS, EvalRow, Item
from lame_runtime.embedder import unit_prefix
from lame_runtime.inputs.preprocess import format_query

Encode = Callable[..., np.ndarray]
KS = (5, 10)
assert METRICS == ("hit@1", *(f"ndcg@{k}" for k in KS))  # the names rows may pick


def rank_of_positive(scores: np.ndarray, label: int) -> int:
    """1-based pessimistic rank: every negative scoring >= the positive ranks above it, so a
    collapsed model (all scores equal, or NaN) never gets credit for the positive's slot."""
    positive = scores[label]
    if not np.isfinite(positive):
        return len(scores)
    negatives = np.delete(scores, label)
    return 1 + int(np.sum(~(negatives < positive)))  # NaN negatives count as beating it


def pessimistic_order(scores: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Candidate indices best-first under the module's tie rule (see the docstring)."""
    relevant = gains > 0
    effective = np.where(relevant & ~np.isfinite(scores), -np.inf, scores)
    effective = np.where(~relevant & np.isnan(scores), np.inf, effective)
    return np.lexsort((gains, -effective))  # last key is primary: score desc, then gain asc


def dcg(gains: Sequence[float]) -> float:
    # Zero gains add exactly 0.0, so one positive at rank r gives exactly 1 / log2(r + 1).
    return sum(float(g) / math.log2(i + 2) for i, g in enumerate(gains) if g)


def row_metrics(scores: np.ndarray, label: int, relevance: Sequence[float] | None = None) -> dict[str, float]:
    gains = np.zeros(len(scores))
    if relevance is None:
        gains[label] = 1.0
    else:
        gains[:] = relevance
    if not np.any(gains > 0):
        raise ValueError("a row needs at least one candidate with positive relevance")
    ranked = gains[pessimistic_order(np.asarray(scores, dtype=float), gains)]
    ideal = np.sort(gains)[::-1]
    metrics = {"hit@1": float(ranked[0] > 0)}
    for k in KS:
        metrics[f"ndcg@{k}"] = dcg(ranked[:k]) / dcg(ideal[:k])
    return metrics


def embed_unique(
    encode: Encode, items: Sequence[Item], batch_size: int, progress: bool = False, label: str = "eval"
) -> dict[str, np.ndarray]:
    """Embed each distinct item once (eval rows share many candidates), ``batch_size`` at a
    time, with a progress bar when ``progress``."""
    unique = list({item.key(): item for item in items}.values())
    bar = _bar(len(unique), label, progress)
    vectors = []
    try:
        for start in range(0, len(unique), batch_size):
            part = unique[start : start + batch_size]
            vectors.append(encode(**encode_inputs(part), batch_size=batch_size))
            bar.update(len(part))
    finally:
        bar.close()
    flat = np.concatenate(vectors) if vectors else []
    return {item.key(): vec for item, vec in zip(unique, flat)}


def encode_inputs(items: Sequence[Item]) -> dict[str, list]:
    """Items -> ``encode`` keyword arguments: ``images[i]`` one image, or the list of an item
    with several; ``videos`` only when some item has one (an encoder without video support
    is then refused by name rather than handed a keyword it ignores)."""
    inputs: dict[str, list] = {
        "texts": [item.text for item in items],
        "images": [list(item.images) if len(item.images) > 1 else item.image for item in items],
    }
    if any(item.video is not None for item in items):
        inputs["videos"] = [item.video for item in items]
    return inputs


def _bar(total: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="item", disable=not enabled, dynamic_ncols=True, leave=False)


def score_rows(
    encode: Encode,
    rows: Sequence[EvalRow],
    batch_size: int = 64,
    encode_target: Encode | None = None,
    progress: bool = False,
    dimensions: Sequence[int | None] = (None,),
) -> dict[int | None, list[np.ndarray]]:
    """Each row's candidate scores, per embedding size in ``dimensions`` (None: the full
    vectors; d: their first d components renormalised, as a Matryoshka model is served).
    Everything is embedded once, whatever the number of sizes."""
    queries = [replace(r.query, text=format_query(r.query.text, r.instruction)) for r in rows]
    query_vecs = embed_unique(encode, queries, batch_size, progress, "eval queries")
    cand_vecs = embed_unique(
        encode_target or encode,
        [c for r in rows for c in r.candidates],
        batch_size,
        progress,
        "eval candidates",
    )
    out: dict[int | None, list[np.ndarray]] = {d: [] for d in dimensions}
    for query, row in zip(queries, rows):
        cands = np.stack([cand_vecs[c.key()] for c in row.candidates])
        for d in dimensions:
            q, c = query_vecs[query.key()][None], cands
            if d is not None:  # exactly as the runtime serves a Matryoshka size
                q, c = unit_prefix(q, d), unit_prefix(c, d)
            out[d].append(c @ q[0])
    return out


def evaluate(
    encode: Encode,
    rows: Sequence[EvalRow],
    batch_size: int = 64,
    encode_target: Encode | None = None,
    progress: bool = True,
    dimensions: Sequence[int] = (),
) -> dict:
    """-> {"hit@1", "ndcg@5", "ndcg@10", "n", "per_task": {...}, "per_group": {...}} in percent.

    Each ``per_task`` entry also names the ``metric`` its rows chose (MMEB image tasks hit@1,
    visual-document tasks ndcg@5, MRMR ndcg@10) and that metric's value as ``score``.
    A group is the task name before its first '.', e.g. ``tier2`` for ``tier2.oddsum.i2t``.
    ``dimensions``: also score the vectors' leading d components (Matryoshka sizes) and add
    ``by_dimension`` {d: {"hit@1", ..., "per_group"}} from the same embeddings."""
    if not rows:
        raise ValueError("no evaluation rows")
    by_size = score_rows(encode, rows, batch_size, encode_target, progress, (None, *dimensions))
    result = _summarise(by_size[None], rows)
    if dimensions:
        result["by_dimension"] = {
            str(d): {k: v for k, v in _summarise(by_size[d], rows).items() if k != "per_task"}
            for d in dimensions
        }
    return result


def _summarise(scores: list[np.ndarray], rows: Sequence[EvalRow]) -> dict:
    per_row = [row_metrics(s, r.label, r.relevance) for s, r in zip(scores, rows)]
    by_task, by_group = defaultdict(list), defaultdict(list)
    task_metric: dict[str, str] = {}
    for metrics, row in zip(per_row, rows):
        by_task[row.task].append(metrics)
        by_group[row.task.split(".")[0]].append(metrics)
        # load_eval already rejects mixed metrics; rows built in code might not.
        if task_metric.setdefault(row.task, row.metric) != row.metric:
            raise ValueError(f"task '{row.task}' mixes metrics '{task_metric[row.task]}' and '{row.metric}'")
    result = _mean(per_row)
    result["per_task"] = {
        task: _with_score(_mean(m), task_metric[task]) for task, m in sorted(by_task.items())
    }
    result["per_group"] = {group: _mean(m) for group, m in sorted(by_group.items())}
    return result


def _with_score(means: dict, metric: str) -> dict:
    return {**means, "metric": metric, "score": means[metric]}


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


def limit_rows(rows: Sequence[EvalRow], limit: int | None) -> list[EvalRow]:
    """At most ``limit`` rows, spread evenly over the tasks (round-robin in file order), so a
    quick look at a large eval set still covers every task; None: all rows."""
    if limit is None or limit >= len(rows):
        return list(rows)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    by_task = defaultdict(list)
    for index, row in enumerate(rows):
        by_task[row.task].append(index)
    queues = list(by_task.values())
    picked: list[int] = []
    depth = 0
    while len(picked) < limit:
        for queue in queues:
            if depth < len(queue) and len(picked) < limit:
                picked.append(queue[depth])
        depth += 1
    return [rows[i] for i in sorted(picked)]
