"""One preprocessing entry point for training and serving: texts/images -> model feed dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lame_runtime.artifact.manifest import PREPROCESSOR_FILE, TOKENIZER_FILE
from lame_runtime.errors import InputError, InputTypeError, MissingFileError
from lame_runtime.inputs.images import ImageConfig, preprocess_images
from lame_runtime.inputs.template import Instructed, PromptTemplate
from lame_runtime.inputs.text import TextProcessor
from lame_runtime.persist import read_json

# Names of the model inputs, shared by the PyTorch model and the exported ONNX graph.
INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values", "image_mask")


def format_query(text: str | None, instruction: str | None) -> str | None:
    """Prefix an instruction the way training did (one space between instruction and text).
    The result also carries both parts (:class:`Instructed`), for models whose prompt
    template puts the instruction elsewhere."""
    if not instruction:
        return text
    return Instructed(text, instruction)


class Preprocessor:
    def __init__(self, text: TextProcessor, image: ImageConfig):
        self.text = text
        self.image = image
        self.image_cache: dict[str, np.ndarray] | None = None  # set by training loops
        # Pixel limit for input images (None: lame_runtime.inputs.images.default_max_pixels).
        self.max_pixels: int | None = None

    @classmethod
    def from_dir(cls, directory: str | Path) -> Preprocessor:
        """Load ``tokenizer.json`` + ``preprocessor_config.json`` from a checkpoint or artifact."""
        directory = Path(directory)
        config_path = directory / PREPROCESSOR_FILE
        if not config_path.is_file():
            raise MissingFileError(f"missing {PREPROCESSOR_FILE} in {directory}")
        config = read_json(config_path, InputError)
        if not isinstance(config, dict) or not isinstance(config.get("image"), dict):
            raise InputError(f"{config_path} must be an object with an 'image' object")
        template = config.get("template")
        template = PromptTemplate.from_dict(template) if template is not None else None
        text = TextProcessor(directory / TOKENIZER_FILE, config.get("max_text_tokens", 48), template)
        try:
            image = ImageConfig.from_dict(config["image"])
        except (TypeError, ZeroDivisionError) as err:
            raise InputError(f"{config_path}: bad 'image' config: {err}") from err
        return cls(text, image)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.text.tokenizer.save(str(directory / TOKENIZER_FILE))
        config = {"max_text_tokens": self.text.max_text_tokens, "image": self.image.to_dict()}
        if self.text.template is not None:
            config["template"] = self.text.template.to_dict()
        (directory / PREPROCESSOR_FILE).write_text(json.dumps(config, indent=2))

    def __call__(
        self,
        texts: Sequence[str | None] | None = None,
        images: Sequence[Any] | None = None,
        first_index: int = 0,
    ) -> dict[str, np.ndarray]:
        """-> the model feed. ``first_index``: the position of row 0 in the caller's input,
        so an error names the caller's item (``images[130]``), not a batch-local one."""
        texts, images = align_inputs(texts, images, first_index)
        if not texts:
            raise InputError("nothing to preprocess: empty input")
        has_image = [image is not None for image in images]
        ids, mask = self.text.encode_rows(texts, has_image, self.image.num_tokens)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "pixel_values": preprocess_images(
                images, self.image, self.image_cache, first_index, self.max_pixels
            ),
            "image_mask": np.asarray(has_image, dtype=np.int64),
        }


def align_inputs(
    texts: Sequence[str | None] | None, images: Sequence[Any] | None, first_index: int = 0
) -> tuple[list[str | None], list[Any]]:
    """Validate and pair texts with images: one (possibly interleaved) query per row.

    Each argument is a list (any ordered iterable) or None. A single string, path, array or
    PIL image raises ``InputTypeError`` (it would otherwise be iterated item by item). Empty
    lists give empty lists (the caller decides what an empty batch means). A text that is not
    valid Unicode (a lone surrogate, e.g. from ``os.fsdecode`` or a bad JSON escape) raises
    ``InputError`` naming ``texts[i]``. ``first_index``: the position of row 0 in the caller's
    input, for the messages.
    """
    if texts is None and images is None:
        raise InputError("give texts, images, or both")
    rows = _as_rows(texts, "texts", "strings") if texts is not None else None
    pictures = _as_rows(images, "images", "paths, PIL images or arrays") if images is not None else None
    if rows is None:
        rows = [None] * len(pictures or ())
    if pictures is None:
        pictures = [None] * len(rows)
    texts, images = rows, pictures
    if len(texts) != len(images):
        raise InputError(
            f"texts and images must have equal lengths (one query per row), "
            f"got {len(texts)} texts and {len(images)} images"
        )
    for row, (text, image) in enumerate(zip(texts, images)):
        i = first_index + row
        if text is not None and not isinstance(text, str):
            raise InputTypeError(f"texts[{i}] must be a string or None, got {type(text).__name__}")
        if text is None and image is None:
            raise InputError(f"row {i} has neither text nor image")
        if text:
            check_unicode(text, f"texts[{i}]")
    return texts, images


def check_unicode(text: str, what: str) -> None:
    """Raise ``InputError`` if ``text`` cannot be encoded as UTF-8 (what the tokenizer needs)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        raise InputError(
            f"{what} is not valid Unicode: lone surrogate U+{ord(bad):04X} at "
            f"character {err.start} (decode the source with errors='replace')"
        ) from None


def _as_rows(value: Any, name: str, kind: str) -> list[Any]:
    if isinstance(value, np.ndarray) and value.ndim == (4 if name == "images" else 1):
        return list(value)  # a batch array: one row per item
    single = (str, bytes, Path, np.ndarray, dict, set, frozenset)
    if isinstance(value, single) or type(value).__module__.startswith("PIL."):
        what = {str: "string", bytes: "bytes object", np.ndarray: "array"}.get(
            type(value), "path" if isinstance(value, Path) else type(value).__name__
        )
        raise InputTypeError(
            f"{name} must be a list of {kind}, got a single {what}: pass a list, e.g. {name}=[value]"
        )
    try:
        return list(value)
    except TypeError as err:
        raise InputTypeError(f"{name} must be a list of {kind}, got {type(value).__name__}") from err
