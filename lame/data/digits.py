"""Bundled reasoning benchmark built from sklearn's 1,797 real 8x8 handwritten digits
(or, with ``glyphs="rendered"``, from jittered font renders: ``lame.data.glyphs``).

Composite images (16x64 grayscale) show 2-4 digits; texts are statements about
the digit sequence ("the odd digits add up to 9"), each a predicate object with
``text`` and ``holds`` so truth on any image is checkable.  Tier 1 (2 digits):
read, sum, max.  Tier 2 (3-4 digits, multi-step): oddsum, range, countgt and the
compound order+sum.  Tasks are ``tier{1|2}.{family}.{i2t|t2i}``.  Handwriting
samples are split 80/20 (stratified) before composing, so eval images never reuse
a training sample; ``images.jsonl`` records each image's digits and samples.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from lame.data.glyphs import GLYPH_SOURCES, SLOT, font_manifest, load_glyphs
from lame.data.statements import (  # noqa: F401  (parse_statement is re-exported)
    DIRECTIONS,
    FAMILY_TIER,
    INSTRUCTIONS,
    TASKS,
    TIER_FAMILIES,
    Digits,
    Statement,
    _is_sorted,
    _order_measure,
    family_statements,
    parse_statement,
    rationale,
    statement_distance,
    true_statement,
)

IMAGE_HEIGHT, IMAGE_WIDTH = SLOT, 4 * SLOT
EVAL_FRACTION = 0.2
# Images are made in groups of a base sequence plus near-miss variants (permuted,
# one digit changed, same sum ...), so hard negatives exist inside each split.
GROUP_SIZE = 4
# Share of the eval negatives taken from the most similar false images.
HARD_FRACTION = 1 / 3
IMAGE_INDEX_FILE = "images.jsonl"
# What the decoder head reconstructs for text->image rows. "statement" copies the query (the
# original behaviour: a copy task that teaches the reason tokens nothing about the image side);
# "reasoning" is the positive image's digits and the derived quantity (its rationale), which
# the query side can only produce by reasoning about what the matching image must contain.
T2I_ANSWERS = ("statement", "reasoning")
DESCRIPTION = (
    "Statements about composites of 2-4 real handwritten digits (sklearn load_digits). "
    "Tier 1: read, sum, max; tier 2 (multi-step): oddsum, range, countgt, order+sum. "
    "Handwriting samples are split 80/20 before composing; see images.jsonl."
)
RENDERED_DESCRIPTION = (
    "Perception-solved variant: the same tasks, tiers and negatives, digits drawn from 7 fonts "
    "bundled with matplotlib with size/rotation/position/contrast jitter (lame.data.glyphs). "
    "Renders are split 80/20 before composing; see images.jsonl and meta.json's fonts."
)


def _sample_base(family: str, rng: np.random.Generator) -> Digits:
    length = 2 if FAMILY_TIER[family] == 1 else int(rng.integers(3, 5))
    if family != "order":
        return tuple(int(d) for d in rng.integers(0, 10, length))
    # Sorted sequences are rare by chance (4% of 4-digit ones), so build them.
    ascending = sorted(int(d) for d in rng.choice(10, length, replace=False))
    return tuple(ascending if rng.random() < 0.5 else ascending[::-1])


def _permuted(digits: Digits, rng: np.random.Generator) -> Digits | None:
    if len(set(digits)) == 1:
        return None
    while True:
        shuffled = tuple(int(d) for d in rng.permutation(digits))
        if shuffled != digits:
            return shuffled


def _one_changed(digits: Digits, rng: np.random.Generator) -> Digits:
    position = int(rng.integers(len(digits)))
    new = (digits[position] + int(rng.integers(1, 10))) % 10
    return digits[:position] + (new,) + digits[position + 1 :]


def _sorted_changed(digits: Digits, rng: np.random.Generator) -> Digits | None:
    """One digit changed, still strictly sorted the same way (so only the sum differs)."""
    changed = (_one_changed(digits, rng) for _ in range(20))
    return next((c for c in changed if _is_sorted(c, _is_sorted(digits, 1))), None)


def _same_sum(digits: Digits, rng: np.random.Generator) -> Digits | None:
    for _ in range(20):
        i, j = (int(x) for x in rng.choice(len(digits), 2, replace=False))
        delta = int(rng.integers(1, 4))
        changed = list(digits)
        changed[i], changed[j] = digits[i] + delta, digits[j] - delta
        if changed[i] <= 9 and changed[j] >= 0:
            return tuple(changed)
    return None


def _group(family: str, rng: np.random.Generator) -> list[Digits]:
    """A base sequence plus near-miss variants that make good hard negatives."""
    base = _sample_base(family, rng)
    if family == "order":
        variants = [base[::-1], _sorted_changed(base, rng), _permuted(base, rng)]
    else:
        variants = [_permuted(base, rng), _one_changed(base, rng), _same_sum(base, rng)]
    return [base] + [v if v is not None else _one_changed(base, rng) for v in variants]


def _split_samples(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/eval split of sample indices (before any composition)."""
    train, held_out = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_eval = int(round(len(members) * EVAL_FRACTION))
        held_out.append(members[:n_eval])
        train.append(members[n_eval:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))


def compose(glyphs: Sequence[np.ndarray]) -> np.ndarray:
    """Place 16x16 glyphs side by side, centred in the 4-slot canvas."""
    canvas = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
    left = (4 - len(glyphs)) * SLOT // 2
    for slot, glyph in enumerate(glyphs):
        canvas[:, left + slot * SLOT : left + (slot + 1) * SLOT] = glyph
    return canvas


class _Pool:
    """The composite images of one split, with digit features for fast search."""

    def __init__(self, split: str, sequences: list[Digits], samples: list[tuple[int, ...]]):
        self.split = split
        self.digits = sequences
        self.samples = samples
        self.paths = [f"images/{split}_{i:05d}.png" for i in range(len(sequences))]
        self.tiers = np.array([1 if len(d) == 2 else 2 for d in sequences])
        # Similarity features: digit counts, then sum and length; kept per tier
        # (negatives never cross tiers) so each search slices nothing.
        features = np.array(
            [[*np.bincount(d, minlength=10), sum(d), len(d)] for d in sequences], dtype=np.int16
        ).reshape(-1, 12)
        self.features = features
        self.by_tier = {t: (self.members(t), features[self.members(t)]) for t in TIER_FAMILIES}

    def members(self, tier: int) -> np.ndarray:
        return np.flatnonzero(self.tiers == tier)

    def ranked_false(
        self, statement: Statement, anchor: int, rng: np.random.Generator, limit: int
    ) -> list[int]:
        """Up to ``limit`` same-tier images where ``statement`` is false, most similar first.

        Similarity to the anchor: shared digits count double, then same sum and
        same length; random jitter breaks ties so choices vary.
        """
        idx, features = self.by_tier[self.tiers[anchor]]
        mine = self.features[anchor]
        score = 2 * np.minimum(features[:, :10], mine[:10]).sum(axis=1)
        score = score + (features[:, 10:] == mine[10:]).sum(axis=1)
        score = -(score + rng.random(len(idx)))
        # Usually the 64 most similar images suffice, so sort those before all.
        head = np.argpartition(score, min(len(idx), 64) - 1)[:64]
        for candidates in (head, np.arange(len(idx))):
            order = idx[candidates[np.argsort(score[candidates], kind="stable")]].tolist()
            false = (j for j in order if j != anchor and not statement.holds(self.digits[j]))
            found = list(itertools.islice(false, limit))
            if len(found) == limit:
                break
        return found


def _build_pool(
    split: str,
    n_images: int,
    sample_ids: np.ndarray,
    labels: np.ndarray,
    glyphs: np.ndarray,
    rng: np.random.Generator,
    out_dir: Path,
    progress: Callable[[str], None],
) -> _Pool:
    families = list(FAMILY_TIER)
    n_groups = math.ceil(n_images / GROUP_SIZE)
    group_families = [families[g % len(families)] for g in range(n_groups)]
    rng.shuffle(group_families)
    sequences = [seq for fam in group_families for seq in _group(fam, rng)][:n_images]
    by_digit = [sample_ids[labels[sample_ids] == d] for d in range(10)]
    samples = [tuple(int(rng.choice(by_digit[d])) for d in seq) for seq in sequences]
    pool = _Pool(split, sequences, samples)
    for i, path in enumerate(pool.paths):
        canvas = compose([glyphs[s] for s in samples[i]])
        Image.fromarray(canvas).save(out_dir / path)
        if (i + 1) % 1000 == 0 or i + 1 == n_images:
            progress(f"{split}: rendered {i + 1}/{n_images} images")
    return pool


def _train_rows(pool: _Pool, rng: np.random.Generator, t2i_answer: str = "statement") -> list[dict]:
    rows = []
    for image in range(len(pool.digits)):
        for family in _image_families(pool.digits[image], rng):
            statement = true_statement(family, pool.digits[image], rng)
            for direction in DIRECTIONS:
                rows.append(_train_row(pool, image, family, statement, direction, rng, t2i_answer))
    return rows


def _image_families(digits: Digits, rng: np.random.Generator) -> list[str]:
    """1-2 families with a true statement about this image."""
    tier = 1 if len(digits) == 2 else 2
    usable = [f for f in TIER_FAMILIES[tier] if f != "order" or _order_measure(digits, 0)]
    # Sorted images are scarce, so they always teach the compound statement.
    first = "order" if "order" in usable else _pick(usable, rng)
    rest = [f for f in usable if f != first]
    return [first, _pick(rest, rng)] if rng.random() < 0.5 else [first]


def _pick(options: Sequence, rng: np.random.Generator):
    return options[int(rng.integers(len(options)))]


def _train_row(
    pool: _Pool,
    image: int,
    family: str,
    statement: Statement,
    direction: str,
    rng: np.random.Generator,
    t2i_answer: str = "statement",
) -> dict:
    image_item, text_item = {"image": pool.paths[image]}, {"text": statement.text}
    if direction == "i2t":
        near = _ranked_false_statements(statement, pool.digits[image], rng)[:3]
        query, target, negatives = image_item, text_item, [{"text": _pick(near, rng).text}]
    else:
        near_images = pool.ranked_false(statement, image, rng, limit=3)
        negatives = [{"image": pool.paths[_pick(near_images, rng)]}] if near_images else []
        query, target = text_item, image_item
    reasoning = rationale(pool.digits[image], statement)
    answer = reasoning if direction == "t2i" and t2i_answer == "reasoning" else statement.text
    return {
        "query": query,
        "target": target,
        "answer": answer,
        "rationale": reasoning,
        "negatives": negatives,
        "instruction": INSTRUCTIONS[direction],
        "task": f"tier{FAMILY_TIER[family]}.{family}.{direction}",
    }


def _ranked_false_statements(
    positive: Statement, digits: Digits, rng: np.random.Generator
) -> list[Statement]:
    """False statements of the same family, nearest values first (random tie-break)."""
    false = [s for s in family_statements(positive.family) if not s.holds(digits)]
    jitter = rng.random(len(false))
    order = sorted(range(len(false)), key=lambda i: (statement_distance(positive, false[i]), jitter[i]))
    return [false[i] for i in order]


def _eval_rows(pool: _Pool, eval_per_task: int, n_candidates: int, rng: np.random.Generator) -> list[dict]:
    return [
        _eval_row(pool, task, image, n_candidates, rng)
        for task in TASKS
        for image in _eval_anchors(pool, task.split(".")[1], eval_per_task, rng)
    ]


def _eval_row(pool: _Pool, task: str, image: int, n_candidates: int, rng: np.random.Generator) -> dict:
    _, family, direction = task.split(".")
    statement = true_statement(family, pool.digits[image], rng)
    image_item, text_item = {"image": pool.paths[image]}, {"text": statement.text}
    if direction == "i2t":
        query, positive = image_item, text_item
        false = _i2t_negatives(statement, pool.digits[image], n_candidates - 1, rng)
        negatives = [{"text": s.text} for s in false]
    else:
        query, positive = text_item, image_item
        false = _t2i_negatives(pool, statement, image, n_candidates - 1, rng)
        negatives = [{"image": pool.paths[j]} for j in false]
    label = int(rng.integers(n_candidates))
    candidates = negatives[:label] + [positive] + negatives[label:]
    return {
        "query": query,
        "candidates": candidates,
        "label": label,
        "task": task,
        "instruction": INSTRUCTIONS[direction],
    }


def _eval_anchors(pool: _Pool, family: str, count: int, rng: np.random.Generator) -> list[int]:
    """Distinct images for which ``family`` has a true statement (reused only if too few)."""
    eligible = [
        int(i)
        for i in pool.members(FAMILY_TIER[family])
        if family != "order" or _order_measure(pool.digits[i], 0)
    ]
    if not eligible:
        raise ValueError(f"eval split has no image for family {family!r}; raise n_eval_images")
    order = [eligible[i] for i in rng.permutation(len(eligible))]
    return [order[i % len(order)] for i in range(count)]


def _i2t_negatives(
    positive: Statement, digits: Digits, count: int, rng: np.random.Generator
) -> list[Statement]:
    # Same-template statements first so only the digits decide; then false
    # statements of the tier's other families to reach the candidate count.
    family = positive.family
    chosen = _ranked_false_statements(positive, digits, rng)[:count]
    others = [
        s
        for f in TIER_FAMILIES[FAMILY_TIER[family]]
        if f != family
        for s in family_statements(f)
        if not s.holds(digits)
    ]
    chosen += [others[i] for i in rng.permutation(len(others))[: count - len(chosen)]]
    if len(chosen) < count:
        raise ValueError(f"only {len(chosen)} false statements for {family!r}; lower n_candidates")
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _t2i_negatives(
    pool: _Pool, statement: Statement, anchor: int, count: int, rng: np.random.Generator
) -> list[int]:
    n_hard = max(1, int(count * HARD_FRACTION))
    chosen = pool.ranked_false(statement, anchor, rng, limit=n_hard)
    taken = set(chosen) | {anchor}
    for j in rng.permutation(pool.members(pool.tiers[anchor])):
        if len(chosen) == count:
            break
        if int(j) not in taken and not statement.holds(pool.digits[j]):
            chosen.append(int(j))
    if len(chosen) < count:
        raise ValueError(
            f"eval pool has only {len(chosen)} negatives for {statement.text!r}; "
            "raise n_eval_images or lower n_candidates"
        )
    return [chosen[i] for i in rng.permutation(len(chosen))]


def build_digits(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train_images: int = 6000,
    n_eval_images: int = 1500,
    eval_per_task: int = 60,
    n_candidates: int = 50,
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
    t2i_answer: str = "statement",
    glyphs: str = "handwritten",
    val_per_task: int = 0,
    n_val_images: int = 1000,
) -> dict:
    """Build the benchmark into ``out_dir`` (deterministic for ``seed``); returns a summary.

    ``glyphs`` picks the digit source (``lame.data.glyphs``: real handwriting or jittered
    font renders). ``val_per_task`` > 0 also writes ``val.jsonl``: eval-format rows over
    ``n_val_images`` extra images composed from *training* samples and absent from
    ``train.jsonl`` -- the split on which variants are chosen, so eval is only ever measured.
    It is drawn after everything else, so train/eval are the same with or without it.

    The dataset is written into a temporary directory beside ``out_dir`` and
    renamed into place, so an interrupted build never leaves a half dataset.
    """
    if t2i_answer not in T2I_ANSWERS:
        raise ValueError(f"t2i_answer must be one of {T2I_ANSWERS}, got {t2i_answer!r}")
    if glyphs not in GLYPH_SOURCES:
        raise ValueError(f"glyphs must be one of {GLYPH_SOURCES}, got {glyphs!r}")
    if val_per_task < 0 or (val_per_task and n_val_images < 1):
        raise ValueError("val_per_task must be >= 0 and n_val_images >= 1")
    if min(n_train_images, n_eval_images, eval_per_task) < 1 or n_candidates < 2:
        raise ValueError("image counts and eval_per_task must be >= 1, n_candidates >= 2")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty (pass overwrite=True; lame-data digits: --overwrite)"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp makes a private (0700) directory, so build one level below it
    # where the user's umask applies; the holder also receives a replaced dataset.
    holder = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        staging = holder / "new"
        staging.mkdir()
        summary = _write_dataset(
            staging,
            seed,
            n_train_images,
            n_eval_images,
            eval_per_task,
            n_candidates,
            progress or (lambda message: None),
            t2i_answer,
            glyphs,
            val_per_task,
            n_val_images,
        )
        if out_dir.is_dir():
            os.rename(out_dir, holder / "replaced")
        elif out_dir.exists():
            out_dir.unlink()
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    return {**summary, "out_dir": str(out_dir)}


def _write_dataset(
    root: Path,
    seed: int,
    n_train_images: int,
    n_eval_images: int,
    eval_per_task: int,
    n_candidates: int,
    progress: Callable[[str], None],
    t2i_answer: str = "statement",
    glyph_source: str = "handwritten",
    val_per_task: int = 0,
    n_val_images: int = 1000,
) -> dict:
    rng = np.random.default_rng(seed)
    # The handwritten source draws nothing from rng, so the default dataset is unchanged.
    glyphs, labels = load_glyphs(glyph_source, rng)
    train_ids, eval_ids = _split_samples(labels, rng)
    (root / "images").mkdir()
    train = _build_pool("train", n_train_images, train_ids, labels, glyphs, rng, root, progress)
    held = _build_pool("eval", n_eval_images, eval_ids, labels, glyphs, rng, root, progress)
    train_rows = _train_rows(train, rng, t2i_answer)
    progress(f"train: {len(train_rows)} rows")
    eval_rows = _eval_rows(held, eval_per_task, n_candidates, rng)
    progress(f"eval: {len(eval_rows)} rows")
    pools = [train, held]
    _write_jsonl(root / "train.jsonl", train_rows)
    _write_jsonl(root / "eval.jsonl", eval_rows)
    if val_per_task:
        val = _build_pool("val", n_val_images, train_ids, labels, glyphs, rng, root, progress)
        val_rows = _eval_rows(val, val_per_task, n_candidates, rng)
        progress(f"val: {len(val_rows)} rows (training samples, images not in train.jsonl)")
        _write_jsonl(root / "val.jsonl", val_rows)
        pools.append(val)
    _write_jsonl(
        root / IMAGE_INDEX_FILE,
        [
            {
                "image": pool.paths[i],
                "split": pool.split,
                "digits": list(pool.digits[i]),
                "samples": list(pool.samples[i]),
            }
            for pool in pools
            for i in range(len(pool.digits))
        ],
    )
    meta = {
        "name": "lame-digits",
        "seed": seed,
        "n_train_images": n_train_images,
        "n_eval_images": n_eval_images,
        "eval_per_task": eval_per_task,
        "n_candidates": n_candidates,
        "tasks": list(TASKS),
        "t2i_answer": t2i_answer,
        "image_size": {"height": IMAGE_HEIGHT, "width": IMAGE_WIDTH, "mode": "L"},
        "description": DESCRIPTION if glyph_source == "handwritten" else RENDERED_DESCRIPTION,
        "image_index": IMAGE_INDEX_FILE,
        "glyphs": glyph_source,
        "split_samples": {"train": train_ids.tolist(), "eval": eval_ids.tolist()},
    }
    if glyph_source == "rendered":
        meta["fonts"] = font_manifest()
    if val_per_task:
        meta.update(val_per_task=val_per_task, n_val_images=n_val_images)
    (root / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    per_task = {task: sum(row["task"] == task for row in eval_rows) for task in TASKS}
    return {
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "images": n_train_images + n_eval_images,
        "train_images": n_train_images,
        "eval_images": n_eval_images,
        "eval_per_task": per_task,
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
