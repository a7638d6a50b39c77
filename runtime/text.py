"""Tokenisation with the `tokenizers` library alone (no transformers).

Special tokens are looked up by *name* in the tokenizer, never hard-coded by id, so a tokenizer
trained on other data (or a pretrained backbone's, extended with these names) works unchanged.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

# role -> token string. Reason/summary/[EMBED] ids are placeholders: the model appends learned
# embeddings at those positions, but the ids still mark them (e.g. for M-RoPE and masks).
SPECIAL_TOKENS = {
    "pad": "[PAD]",
    "unk": "[UNK]",
    "bos": "[BOS]",
    "eos": "[EOS]",
    "image": "[IMG]",
    "reason": "[REASON]",
    "summary": "[SUM]",
    "embed": "[EMBED]",
}


class TextProcessor:
    """Builds left-padded id matrices: ``[BOS] [IMG]*n_image_tokens text-tokens``."""

    def __init__(self, tokenizer: Tokenizer | str | Path, max_text_tokens: int = 48):
        if not isinstance(tokenizer, Tokenizer):
            path = Path(tokenizer)
            if not path.is_file():
                raise FileNotFoundError(f"tokenizer file not found: {path}")
            tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer = tokenizer
        self.max_text_tokens = int(max_text_tokens)
        self.special = {role: self._require(tok) for role, tok in SPECIAL_TOKENS.items()}

    def _require(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer lacks the special token {token!r}; "
                             f"LaME needs all of {sorted(SPECIAL_TOKENS.values())}")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode_rows(self, texts: Sequence[str | None], has_image: Sequence[bool],
                    num_image_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (input_ids, attention_mask), both int64 [B, L], padded on the left."""
        rows = [self._row(text, image, num_image_tokens) for text, image in zip(texts, has_image)]
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.special["pad"], dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, length - len(row):] = row
            mask[i, length - len(row):] = 1
        return ids, mask

    def _row(self, text: str | None, has_image: bool, num_image_tokens: int) -> list[int]:
        tokens = self.encode_text(text) if text else []
        if len(tokens) > self.max_text_tokens:
            warnings.warn(f"text of {len(tokens)} tokens truncated to {self.max_text_tokens}: "
                          f"{text[:60]!r}...", stacklevel=3)
            tokens = tokens[: self.max_text_tokens]
        image = [self.special["image"]] * num_image_tokens if has_image else []
        return [self.special["bos"], *image, *tokens]
