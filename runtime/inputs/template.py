"""Prompt templates: the token layout of a pretrained embedder's own recipe.

LaME's own models read ``[BOS] [IMG]*n text`` with the instruction prefixed to the text. An
embedder imported from Hugging Face (``lame-import embedder``) was trained on a chat template
instead, e.g. Qwen3-VL-Embedding's::

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|>{image pads}<|vision_end|>{text}<|im_end|>\\n<|im_start|>assistant\\n

and pools the hidden state of the last token. A :class:`PromptTemplate` (saved in
``preprocessor_config.json`` under ``"template"``, so training, export and serving all read the
same one) reproduces that layout token for token:

* the template's own special tokens are placed by id; the text between them, *including the
  user's text and the instruction*, is tokenised as one run, as the Hugging Face tokenizer
  does after splitting out special tokens, so byte-level BPE merges across the boundary
  identically. User text never yields a special token (``encode_special_tokens``), so a query
  containing ``<|im_end|>`` cannot end the turn;
* the instruction is the query's (``format_query`` carries it as :class:`Instructed`), else
  the template's default; ``instruction_period`` appends "." unless it already ends in
  punctuation (Qwen3-VL-Embedding's rule);
* a row with neither image nor text gets ``empty_text`` (Qwen3-VL-Embedding embeds "NULL").
"""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Any

from lame_runtime.errors import InputError

IMAGE = "{image}"
TEXT = "{text}"
INSTRUCTION = "{instruction}"


class Instructed(str):
    """A query text with its instruction: the plain string is ``"{instruction} {text}"``
    (what LaME's own models read); a template places the two parts apart."""

    instruction: str
    body: str | None

    def __new__(cls, text: str | None, instruction: str) -> Instructed:
        value = super().__new__(cls, f"{instruction} {text}" if text else instruction)
        value.instruction, value.body = instruction, text
        return value


@dataclass
class PromptTemplate:
    """A layout string with the placeholders ``{instruction}``, ``{image}`` and ``{text}``
    (each once), its special tokens, and what the image placeholder expands to."""

    layout: str
    special_tokens: list[str]  # token strings placed by id (must be in the tokenizer)
    image_open: str = ""  # special token before the image pads ("" = none)
    image_close: str = ""
    default_instruction: str = ""
    instruction_period: bool = False
    empty_text: str = ""
    recipe: str = ""  # where it comes from, for messages and the manifest

    def __post_init__(self) -> None:
        for placeholder in (INSTRUCTION, IMAGE, TEXT):
            if self.layout.count(placeholder) != 1:
                raise InputError(
                    f"prompt template {self.recipe or ''}: the layout must hold {placeholder} exactly once"
                )
        for token in (self.image_open, self.image_close):
            if token and token not in self.special_tokens:
                raise InputError(f"prompt template: {token!r} is not among its special tokens")

    @classmethod
    def from_dict(cls, data: Any) -> PromptTemplate:
        if not isinstance(data, dict):
            raise InputError(f"prompt template must be an object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"prompt template: unknown keys {unknown}")
        try:
            return cls(**data)
        except TypeError as err:
            raise InputError(f"prompt template: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _visual(self, pieces: list[tuple[str, Any]], count: int) -> None:
        if self.image_open:
            pieces.append(("special", self.image_open))
        pieces.append(("image", count))
        if self.image_close:
            pieces.append(("special", self.image_close))

    def instruction_for(self, instruction: str | None) -> str:
        text = (instruction if instruction is not None else self.default_instruction).strip()
        if self.instruction_period and text and not unicodedata.category(text[-1]).startswith("P"):
            text += "."
        return text

    def parts(
        self, text: str, instruction: str | None, image_tokens: int | list[int | VideoSpan]
    ) -> list[tuple[str, Any]]:
        """-> [("text", str) | ("special", token) | ("image", count)], adjacent texts merged.
        ``image_tokens``: one image's placeholder count (0: none), or one count per visual of
        the row, each wrapped in the template's open/close tokens."""
        counts = image_tokens if isinstance(image_tokens, list) else [image_tokens] * bool(image_tokens)
        pieces: list[tuple[str, Any]] = []
        rest = self.layout
        specials = sorted(self.special_tokens, key=len, reverse=True)
        values = {INSTRUCTION: self.instruction_for(instruction), TEXT: text}
        while rest:
            hits = [(rest.find(s), s) for s in (*specials, INSTRUCTION, TEXT, IMAGE) if s in rest]
            if not hits:
                _append_text(pieces, rest)
                break
            at, found = min(hits)
            _append_text(pieces, rest[:at])
            rest = rest[at + len(found) :]
            if found in values:
                _append_text(pieces, values[found])
            elif found == IMAGE:
                for count in counts:
                    if isinstance(count, VideoSpan) and count.timestamps is not None:
                        for seconds in count.timestamps:
                            _append_text(pieces, f"<{seconds:.1f} seconds>")
                            self._visual(pieces, count.per_step)
                    else:
                        self._visual(pieces, count.tokens if isinstance(count, VideoSpan) else count)
            else:
                pieces.append(("special", found))
        return pieces


@dataclass(frozen=True)
class VideoSpan:
    """A video's placeholders in a prompt: ``steps`` runs of ``per_step`` tokens, each after
    its "<t seconds>" timestamp (Qwen3-VL's layout) when ``timestamps`` are given."""

    steps: int
    per_step: int
    timestamps: tuple[float, ...] | None = None

    @property
    def tokens(self) -> int:
        return self.steps * self.per_step


def _append_text(pieces: list[tuple[str, Any]], text: str) -> None:
    if not text:
        return
    if pieces and pieces[-1][0] == "text":
        pieces[-1] = ("text", pieces[-1][1] + text)
    else:
        pieces.append(("text", text))
