"""Training batches: rows -> feeds for query, target and hard negatives, decoder ids, answer mask.

All tokenisation and image work goes through :class:`lame_runtime.inputs.preprocess.Preprocessor`, the same code
the runtime serves with.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch

from lame.data.dataset import DatasetError, Item, TrainRow
from lame_runtime.inputs.images import ImageConfig
from lame_runtime.inputs.preprocess import Preprocessor, format_query


def batch_indices(num_rows: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of global step ``step``: a seeded permutation per epoch, so any step's batch can
    be recomputed after a restart without saving sampler state."""
    per_epoch = max(1, num_rows // batch_size)
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    return order[offset * batch_size : (offset + 1) * batch_size]


class BatchPlan:
    """Rows of each global step, optionally bounded by a visual-token budget.

    Without ``budget`` it is :func:`batch_indices`. With it, each epoch's seeded permutation
    (the same one) is cut, in order, into batches: a batch takes rows until it holds
    ``batch_size`` rows or the next row would bring its visual tokens (``costs``) past
    ``budget``; that row starts the next batch. Rows are never split, every row is seen once
    per epoch, and the rows left at an epoch's end that fill no batch wait for the next
    permutation (as without a budget). A step's batch is a pure function of (seed, step,
    costs), so a resumed run recomputes it."""

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        seed: int,
        costs: Sequence[int] | None = None,
        budget: int | None = None,
    ):
        if (costs is None) != (budget is None):
            raise ValueError("give both costs and budget, or neither")
        if costs is not None and len(costs) != num_rows:
            raise ValueError(f"costs has {len(costs)} entries for {num_rows} rows")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.costs, self.budget = costs, budget
        self._counts: list[int] = []  # batches per epoch, epochs 0.. as far as computed
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def __call__(self, step: int) -> np.ndarray:
        if self.budget is None:
            return batch_indices(self.num_rows, self.batch_size, self.seed, step)
        epoch = 0
        while True:
            if epoch == len(self._counts):
                self._counts.append(len(self._epoch(epoch)))
            if step < self._counts[epoch]:
                return self._epoch(epoch)[step]
            step -= self._counts[epoch]
            epoch += 1

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
            self._cached = (epoch, _pack(order, self.costs, self.budget, self.batch_size))
        return self._cached[1]


def _pack(order: np.ndarray, costs, budget: int, batch_size: int) -> list[np.ndarray]:
    batches, current, total = [], [], 0
    for index in order:
        cost = int(costs[index])
        if current and (len(current) == batch_size or total + cost > budget):
            batches.append(np.asarray(current))
            current, total = [], 0
        current.append(index)
        total += cost
    if len(current) == batch_size:
        batches.append(np.asarray(current))
    return batches


def item_tokens(image: ImageConfig) -> Callable[[Item], int]:
    """-> the visual tokens (after merging) of an item, counted from the files' headers and
    cached per file (rows share images)."""
    if not image.native:
        return lambda item: image.num_tokens * len(item.images)
    from lame_runtime.inputs.native import image_tokens, video_tokens

    cache: dict[tuple[str, str], int] = {}

    def count(kind: str, path: str) -> int:
        if (kind, path) not in cache:
            cache[kind, path] = image_tokens(path, image) if kind == "i" else video_tokens(path, image)
        return cache[kind, path]

    def tokens(item: Item) -> int:
        total = sum(count("i", path) for path in item.images)
        return total + (count("v", item.video) if item.video is not None else 0)

    return tokens


def row_costs(rows: Sequence[TrainRow], image: ImageConfig, hard_negatives: int, budget: int) -> list[int]:
    """Visual tokens each row adds to a step: its query, its target and the hard negatives the
    collator embeds for it (a row short of negatives repeats its target, when the dataset has
    any). A row over ``budget`` alone is a DatasetError naming it."""
    tokens = item_tokens(image)
    fillers = hard_negatives > 0 and any(row.negatives for row in rows)
    costs = []
    for row in rows:
        try:
            parts = [tokens(row.query), tokens(row.target)]
            parts += [tokens(item) for item in row.negatives[:hard_negatives]]
        except (OSError, ValueError) as err:  # InputError is a ValueError
            raise DatasetError(f"{row.where}: {err}") from err
        if fillers:
            parts += [parts[1]] * (hard_negatives - min(hard_negatives, len(row.negatives)))
        cost = sum(parts)
        if cost > budget:
            raise DatasetError(
                f"{row.where or 'row'}: needs {cost} visual tokens (query {parts[0]}, target "
                f"{parts[1]}, negatives {sum(parts[2:])}), more than max_batch_visual_tokens={budget} "
                "on its own: raise the budget or lower max_pixels"
            )
        costs.append(cost)
    return costs


class Collator:
    def __init__(
        self,
        preprocessor: Preprocessor,
        max_answer_tokens: int,
        hard_negatives: int,
        rationale_tokens: int = 0,
        decoder_rows: int | None = None,
        answer_encoder: Callable[[Sequence[str], int], tuple[torch.Tensor, torch.Tensor]] | None = None,
        answer_ignore: int | None = None,
    ):
        """``decoder_rows``: answer targets for the first N rows only (the others' targets are
        all ``answer_ignore``, so the objective skips them in the decoder pass);
        ``answer_encoder`` (texts, max tokens) -> (inputs, targets) replaces the dataset
        tokenizer's ids, e.g. a pretrained latent decoder's own tokenizer."""
        self.decoder_rows = decoder_rows
        self.answer_encoder = answer_encoder
        self.answer_ignore = preprocessor.text.special["pad"] if answer_ignore is None else answer_ignore
        self.pre = preprocessor
        self.max_answer_tokens = max_answer_tokens
        self.hard_negatives = hard_negatives
        self.rationale_tokens = rationale_tokens  # > 0: the CoT baseline's "rationale . answer"

    def __call__(
        self, rows: Sequence[TrainRow], global_rows: Sequence[TrainRow] | None = None, offset: int = 0
    ) -> dict:
        """``rows`` are this process's; ``global_rows``/``offset`` describe the whole batch
        when several processes train (false negatives are masked against all of it)."""
        queries = [replace(r.query, text=format_query(r.query.text, r.instruction)) for r in rows]
        batch = {
            "query": self._feed(queries),
            "target": self._feed([r.target for r in rows]),
            "same_answer": torch.from_numpy(_same_answer(rows, global_rows or rows)),
            "offset": offset,
        }
        batch["decoder_input"], batch["decoder_target"] = self._answers(rows)
        if self.rationale_tokens:
            batch["rationale"] = self._rationales(rows)
        if self.hard_negatives > 0:
            negatives, valid = self._negatives(rows)
            if valid.any():
                batch["negatives"] = self._feed(negatives)
                batch["negative_valid"] = torch.from_numpy(valid)
        return batch

    def _feed(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(value) for name, value in feed_items(self.pre, items).items()}

    def _negatives(self, rows: Sequence[TrainRow]) -> tuple[list[Item], np.ndarray]:
        """Exactly ``hard_negatives`` per row; rows with fewer reuse their target as filler and
        mark it invalid (masked out of the loss)."""
        items, valid = [], np.zeros((len(rows), self.hard_negatives), dtype=bool)
        for i, row in enumerate(rows):
            for j in range(self.hard_negatives):
                if j < len(row.negatives):
                    items.append(row.negatives[j])
                    valid[i, j] = True
                else:
                    items.append(row.target)
        return items, valid

    def _answers(self, rows: Sequence[TrainRow]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.answer_encoder is not None:
            inputs, targets = self.answer_encoder([_answer(r) for r in rows], self.max_answer_tokens)
        else:
            inputs, targets = self._own_answers(rows)
        if self.decoder_rows is not None:
            targets[self.decoder_rows :] = self.answer_ignore
        return inputs, targets

    def _own_answers(self, rows: Sequence[TrainRow]) -> tuple[torch.Tensor, torch.Tensor]:
        special = self.pre.text.special
        encoded = [self.pre.text.encode_text(_answer(r))[: self.max_answer_tokens] for r in rows]
        length = max(len(e) for e in encoded) + 1
        inputs = np.full((len(rows), length), special["pad"], dtype=np.int64)
        targets = np.full((len(rows), length), special["pad"], dtype=np.int64)
        for i, ids in enumerate(encoded):
            inputs[i, : len(ids) + 1] = [special["bos"], *ids]
            targets[i, : len(ids) + 1] = [*ids, special["eos"]]
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def _rationales(self, rows: Sequence[TrainRow]) -> dict[str, torch.Tensor]:
        """Teacher-forcing ids (right-padded, with a validity mask) and next-token targets:
        ``targets[:, j]`` is what the model should say after j rationale tokens (EOS at the end)."""
        special = self.pre.text.special
        encoded = [self.pre.text.encode_text(cot_text(r))[: self.rationale_tokens] for r in rows]
        span = max(len(e) for e in encoded)
        ids = np.full((len(rows), span), special["pad"], dtype=np.int64)
        valid = np.zeros((len(rows), span), dtype=np.int64)
        targets = np.full((len(rows), span + 1), special["pad"], dtype=np.int64)
        for i, tokens in enumerate(encoded):
            ids[i, : len(tokens)] = tokens
            valid[i, : len(tokens)] = 1
            targets[i, : len(tokens) + 1] = [*tokens, special["eos"]]
        return {
            name: torch.from_numpy(value)
            for name, value in (("ids", ids), ("valid", valid), ("targets", targets))
        }


def cot_text(row: TrainRow) -> str:
    """What the CoT baseline learns to write: the rationale, then the answer."""
    answer = _answer(row)
    return f"{row.rationale} . {answer}" if row.rationale else answer


def _answer(row: TrainRow) -> str:
    """The reconstruction target: the row's answer text, else the target's text."""
    return row.answer or row.target.text or ""


def _same_answer(rows: Sequence[TrainRow], columns: Sequence[TrainRow]) -> np.ndarray:
    """[B, B_columns] True where two rows share an answer (their targets are interchangeable)."""

    def key(row: TrainRow) -> str:
        return row.answer or row.target.key()

    return np.array([[key(a) == key(b) for b in columns] for a in rows], dtype=bool)


def feed_items(pre: Preprocessor, items: Sequence[Item]) -> dict[str, np.ndarray]:
    """Items -> a model feed: at native resolution each row's images (in order) and video;
    at a fixed size one image per row (rows with more are refused when the data loads)."""
    texts = [item.text for item in items]
    if pre.image.native:
        videos = [item.video for item in items]
        return pre(texts, [list(item.images) or None for item in items], 0, videos)
    return pre(texts, [item.image for item in items])
