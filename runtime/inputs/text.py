"""Tokenisation with the `tokenizers` library alone (no transformers).

Special tokens are looked up by *name* in the tokenizer, never hard-coded by id, so a tokenizer
trained on other data (or a pretrained backbone's, extended with these names) works unchanged.

User text can never produce a special token: a document containing "[IMG]" or "[EMBED]" is
tokenised as the plain characters (``encode_special_tokens``), and any structural special id a
tokenizer still emits is replaced by ``[UNK]``. Special ids are only ever placed by id, here.

Text longer than ``max_text_tokens`` is truncated with a warning; a very long text is cut
(in characters) before tokenisation so its cost stays bounded. An empty text embeds as
``[BOS]`` alone (with a warning) unless the row has an image.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from tokenizers import Tokenizer

from lame_runtime.errors import InputError, InputTypeError, MissingFileError
from lame_runtime.inputs.template import VideoSpan

if TYPE_CHECKING:
    from tokenizers import Encoding

    from lame_runtime.inputs.template import PromptTemplate

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
    """Builds left-padded id matrices: ``[BOS] [IMG]*n_image_tokens text-tokens``, or with a
    :class:`~lame_runtime.inputs.template.PromptTemplate` (an imported embedder's recipe) that
    template's layout."""

    def __init__(
        self,
        tokenizer: Tokenizer | str | Path,
        max_text_tokens: int = 48,
        template: PromptTemplate | None = None,
    ) -> None:
        if not isinstance(tokenizer, Tokenizer):
            path = Path(tokenizer)
            if not path.is_file():
                raise MissingFileError(f"tokenizer file not found: {path}")
            try:
                tokenizer = Tokenizer.from_file(str(path))
            except Exception as err:  # tokenizers raises a bare Exception on bad JSON
                raise InputError(f"{path} is not a valid tokenizer.json: {err}") from err
        if (
            not isinstance(max_text_tokens, (int, np.integer))
            or isinstance(max_text_tokens, bool)
            or max_text_tokens < 1
        ):
            raise InputError(f"max_text_tokens must be a positive integer, got {max_text_tokens!r}")
        # Special-token strings inside user text are encoded as ordinary text (not serialised
        # into tokenizer.json, so the file on disk is unchanged).
        tokenizer.encode_special_tokens = True
        self.tokenizer = tokenizer
        self.max_text_tokens = int(max_text_tokens)
        self.special = {role: self._require(tok) for role, tok in SPECIAL_TOKENS.items()}
        self._structural = {i for role, i in self.special.items() if role != "unk"}
        self.template = template
        self._template_ids = (
            {tok: self._require(tok) for tok in template.special_tokens} if template is not None else {}
        )

    def _require(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            needed = sorted(SPECIAL_TOKENS.values())
            template = getattr(self, "template", None)
            if template is not None:
                needed += template.special_tokens
            raise InputError(f"tokenizer lacks the special token {token!r}; this model needs all of {needed}")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode_text(self, text: str) -> list[int]:
        """Ids of ``text`` as plain text: never a structural special token."""
        if not isinstance(text, str):
            raise InputTypeError(f"text must be a string, got {type(text).__name__}")
        return self._plain(self._encoding(text).ids)

    def _encoding(self, text: str) -> Encoding:
        try:
            return self.tokenizer.encode(text, add_special_tokens=False)
        except Exception as err:  # tokenizers raises TypeError/Exception without naming the text
            raise InputError(f"the tokenizer cannot encode the text {text[:40]!r}...: {err}") from err

    def _plain(self, ids: list[int]) -> list[int]:
        if self._structural.intersection(ids):  # a vocabulary that merges "[IMG]" by itself
            unk = self.special["unk"]
            ids = [unk if i in self._structural else i for i in ids]
        return ids

    def _head_encoding(self, text: str, limit: int) -> tuple[Encoding, bool]:
        """(the encoding of ``text``, or of a head of it holding more than ``limit`` tokens;
        whether it is the whole text). A huge text is tokenised only as far as needed."""
        chars = max(256, limit * 16)
        while chars < len(text):
            encoding = self._encoding(text[:chars])
            if len(encoding.ids) > limit + 2:  # the cut word is past the limit: the head is exact
                return encoding, False
            chars *= 4
        return self._encoding(text), True

    def encode_limited(self, text: str, limit: int) -> tuple[list[int], int | None]:
        """(the first ``limit`` ids of ``text``, the full token count or None if it was cut
        before tokenising). A huge text is tokenised only as far as needed."""
        if not isinstance(text, str):
            raise InputTypeError(f"text must be a string, got {type(text).__name__}")
        encoding, whole = self._head_encoding(text, limit)
        ids = self._plain(encoding.ids)
        return ids[:limit], len(ids) if whole else None

    def _warn_truncated(self, text: str, total: int | None, stacklevel: int) -> None:
        size = f"{total} tokens" if total else f"{len(text)} characters"
        warnings.warn(
            f"text of {size} truncated to {self.max_text_tokens} tokens: {text[:60]!r}...",
            stacklevel=stacklevel + 1,
        )

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode_rows(
        self, texts: Sequence[str | None], has_image: Sequence[bool], num_image_tokens: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> (input_ids, attention_mask), both int64 [B, L], padded on the left."""
        counts = [[num_image_tokens] if image else [] for image in has_image]
        return self.encode_visual_rows(texts, counts)

    def encode_visual_rows(
        self, texts: Sequence[str | None], visual_tokens: Sequence[Sequence[int | VideoSpan]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows with any number of visuals (``visual_tokens[i]``: the placeholder count of each
        of row i's images, or a video's :class:`VideoSpan`, in order) -> (input_ids,
        attention_mask), left-padded."""
        rows = [self._row(text, list(counts)) for text, counts in zip(texts, visual_tokens)]
        return self.pad_rows(rows)

    def pad_rows(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Token rows -> (input_ids, attention_mask), both int64 [B, L], padded on the left
        with the pad token (the layout every graph was exported with)."""
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.special["pad"], dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, length - len(row) :] = row
            mask[i, length - len(row) :] = 1
        return ids, mask

    def _row(self, text: str | None, visual_tokens: list[int | VideoSpan]) -> list[int]:
        if self.template is not None:
            return self._template_row(text, visual_tokens)
        tokens: list[int] = []
        if text:
            tokens, total = self.encode_limited(text, self.max_text_tokens)
            if total is None or total > self.max_text_tokens:
                self._warn_truncated(text, total, stacklevel=5)
        elif text is not None and not visual_tokens:
            warnings.warn("empty text embedded as [BOS] alone (no content)", stacklevel=5)
        count = sum(v.tokens if isinstance(v, VideoSpan) else v for v in visual_tokens)
        image = [self.special["image"]] * count
        return [self.special["bos"], *image, *tokens]

    def _template_row(self, text: str | None, visual_tokens: list[int | VideoSpan]) -> list[int]:
        template = self.template
        assert template is not None  # only called for a templated processor
        instruction, body = getattr(text, "instruction", None), getattr(text, "body", text)
        if not body and not visual_tokens:
            body = template.empty_text
        body = self._truncated(body or "")
        ids: list[int] = []
        for kind, value in template.parts(body, instruction, visual_tokens):
            if kind == "text":
                ids += self.encode_text(value)
            elif kind == "special":
                ids.append(self._template_ids[value])
            else:
                ids += [self.special["image"]] * value
        return ids

    def _truncated(self, text: str) -> str:
        """``text`` cut after its ``max_text_tokens``-th token (by character offsets, so the
        template tokenises the kept head as one run), with the usual warning."""
        limit = self.max_text_tokens
        encoding, whole = self._head_encoding(text, limit)
        if len(encoding.ids) <= limit:
            return text
        self._warn_truncated(text, len(encoding.ids) if whole else None, stacklevel=7)
        return text[: encoding.offsets[limit - 1][1]]
