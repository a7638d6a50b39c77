"""Training batches: rows -> feeds for query, target and hard negatives, decoder ids, answer mask.

All tokenisation and image work goes through :class:`lame_runtime.inputs.preprocess.Preprocessor`, the same code
the runtime serves with.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from lame.data.dataset import Item, TrainRow
from lame_runtime.inputs.preprocess import Preprocessor, format_query


def batch_indices(num_rows: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of global step ``step``: a seeded permutation per epoch, so any step's batch can
    be recomputed after a restart without saving sampler state."""
    per_epoch = max(1, num_rows // batch_size)
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    return order[offset * batch_size : (offset + 1) * batch_size]


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
        queries = [Item(format_query(r.query.text, r.instruction), r.query.image) for r in rows]
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
        feed = self.pre([i.text for i in items], [i.image for i in items])
        return {name: torch.from_numpy(value) for name, value in feed.items()}

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
