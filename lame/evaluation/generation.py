"""Greedy-generation check (``lame-eval --generate N``): what a model trained to write (``lm``
pre-training, the ``cot`` baseline) writes for eval queries, scored by exact match.

The model writes "rationale . answer" (the training text, :func:`lame.data.batching.cot_text`).
Eval rows carry no answer, so the reference is
taken from the row:

* text positive (i2t, e.g. image -> statement): the positive candidate's text, the answer the
  training rows of that direction have;
* image positive (t2i, e.g. statement -> image): the query's own text, which is the training
  answer under ``lame-data digits --t2i-answer statement`` (the default). With
  ``--t2i-answer reasoning`` the t2i answer is a rationale about the unseen positive image,
  which the query cannot determine: read those rows' ``exact_match`` as a floor.

Comparison ignores case and *all* whitespace: the from-scratch presets' BPE tokenizer decodes
without spaces ("digits3814.3+8+1+4=16"), so spaces cannot be relied on. A generation matches
when, so normalised, it equals the reference or ends with "." + reference (the answer after the
rationale's last "."). Where the dataset has an image index with the
digits of each image (the digits benchmark), image queries also report ``digits_read``: the
generated text's "digits d d d d" step equals the image's digits (what the model reads).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lame.data.dataset import EvalRow
from lame.methods.decoding import greedy_generate
from lame_runtime.inputs.preprocess import format_query

_DIGITS = re.compile(r"digits((?:\s*\d)+)")


@dataclass
class GenerationCase:
    row: EvalRow
    reference: str
    direction: str  # "i2t" (text positive) or "t2i" (image positive)


def case_for(row: EvalRow) -> GenerationCase:
    positive = row.candidates[row.label]
    if positive.text is not None and positive.image is None:
        return GenerationCase(row, positive.text, "i2t")
    return GenerationCase(row, row.query.text or "", "t2i")


def normalise(text: str) -> str:
    """Case folded, every whitespace removed (see the module docstring)."""
    return "".join(text.split()).lower()


def exact_match(generated: str, reference: str) -> bool:
    """The generation is the reference, or a rationale ending in "." + the reference."""
    text, answer = normalise(generated), normalise(reference)
    return bool(answer) and (text == answer or text.endswith("." + answer))


def read_digits(generated: str) -> tuple[int, ...] | None:
    """The digits (one character each) of the rationale's "digits d d d d" step, or None."""
    found = _DIGITS.search(generated.lower())
    return tuple(int(d) for d in found.group(1) if d.isdigit()) if found else None


def image_digits(data_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Absolute image path -> its digits, from the digits benchmark's image index (else {})."""
    root = Path(data_dir)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return {}
    index = json.loads(meta_path.read_text()).get("image_index")
    if not index or not (root / index).is_file():
        return {}
    found = {}
    for line in (root / index).read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            found[str((root / entry["image"]).resolve())] = tuple(entry["digits"])
    return found


@torch.no_grad()
def generate_texts(
    model,
    rows: Sequence[EvalRow],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Callable[[int], None] = lambda n: None,
) -> list[str]:
    """Greedy text (KV cache, stops at EOS) for each row's query, formatted as in training."""
    was_training = model.training
    model.eval()
    texts: list[str] = []
    decode = model.preprocessor.text.decode
    pad = model.preprocessor.text.special["pad"]
    try:
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            feed = model.preprocessor(
                [format_query(r.query.text, r.instruction) for r in part], [r.query.image for r in part]
            )
            tensors = model.feed_to_tensors(feed)
            tokens = greedy_generate(model, **tensors, max_new_tokens=max_new_tokens, embed=False).tokens
            texts += [decode([t for t in row.tolist() if t != pad]) for row in tokens.cpu()]
            progress(len(part))
    finally:
        model.train(was_training)
    return texts


def score_generations(
    rows: Sequence[EvalRow],
    texts: Sequence[str],
    digits: dict[str, tuple[int, ...]] | None = None,
    samples: int = 5,
) -> dict[str, Any]:
    """Exact match (percent) overall, per direction and per task; digits_read where known."""
    digits = digits or {}
    groups: dict[str, dict[str, list[float]]] = {}

    def add(key: str, metric: str, value: float) -> None:
        groups.setdefault(key, {}).setdefault(metric, []).append(value)

    shown = []
    for row, text in zip(rows, texts, strict=True):
        case = case_for(row)
        hit = float(exact_match(text, case.reference))
        keys = ("overall", case.direction, f"task:{row.task}")
        for key in keys:
            add(key, "exact_match", hit)
        truth = digits.get(str(Path(row.query.image).resolve())) if row.query.image else None
        if truth is not None:
            for key in keys:
                add(key, "digits_read", float(read_digits(text) == truth))
        if len(shown) < samples:
            shown.append({"task": row.task, "generated": text, "reference": case.reference})

    def summary(metrics: dict[str, list[float]]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(metrics["exact_match"])}
        for name, values in metrics.items():
            out[name] = 100.0 * sum(values) / len(values)
        return out

    result: dict[str, Any] = {"n": len(texts)}
    if "overall" in groups:
        result.update(summary(groups["overall"]))
    result["per_direction"] = {k: summary(v) for k, v in groups.items() if k in ("i2t", "t2i")}
    result["per_task"] = {k[5:]: summary(v) for k, v in sorted(groups.items()) if k.startswith("task:")}
    result["samples"] = shown
    result["reference"] = (
        "generation == reference or ends with '.' + reference (case and "
        "whitespace ignored); i2t: the positive's text, t2i: the query's text"
    )
    return result
