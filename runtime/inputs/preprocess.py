"""One preprocessing entry point for training and serving: texts/images -> model feed dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lame_runtime.artifact.manifest import PREPROCESSOR_FILE, TOKENIZER_FILE
from lame_runtime.errors import InputError, InputTypeError, MissingFileError
from lame_runtime.inputs.grid import Visual
from lame_runtime.inputs.images import ImageConfig, preprocess_images
from lame_runtime.inputs.template import Instructed, PromptTemplate, VideoSpan
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

    def rows(
        self,
        texts: Sequence[str | None] | None,
        images: Sequence[Any] | None,
        videos: Sequence[Any] | None = None,
        first_index: int = 0,
    ) -> tuple[list[str | None], list[Any], list[Any] | None]:
        """The caller's inputs validated as rows (texts, images, videos; videos None when none
        were given), by this model's rules: several images per row and videos need a
        native-resolution model, and a fixed-size one refuses them in one line."""
        if self.image.native:
            rows, pictures, clips = native_rows(texts, images, videos, first_index)
            return rows, pictures, clips if videos is not None else None
        if videos is not None:
            raise InputError(
                "this model reads fixed-size images only; videos need a native-resolution "
                "model (a Qwen-VL family trained or imported with resolution 'native')"
            )
        rows, pictures = align_inputs(texts, images, first_index)
        return rows, pictures, None

    def _native(
        self,
        texts: Sequence[str | None] | None,
        images: Sequence[Any] | None,
        videos: Sequence[Any] | None,
        first_index: int,
    ) -> dict[str, np.ndarray]:
        from lame_runtime.inputs.native import native_feed, row_visuals

        rows, pictures, clips = native_rows(texts, images, videos, first_index)
        if not rows:
            raise InputError("nothing to preprocess: empty input")
        visuals = [
            row_visuals(image, video, self.image, first_index + row, self.max_pixels)
            for row, (image, video) in enumerate(zip(pictures, clips))
        ]
        merge = self.image.merge_size
        counts = [[placeholders(v, merge) for v in row] for row in visuals]
        ids, mask = self.text.encode_visual_rows(rows, counts)
        return native_feed(ids, mask, ids == self.text.special["image"], visuals, self.image)

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
        videos: Sequence[Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """-> the model feed. ``first_index``: the position of row 0 in the caller's input,
        so an error names the caller's item (``images[130]``), not a batch-local one.

        At native resolution ``images[i]`` may be one image or a list of images for row i, and
        ``videos[i]`` a video (frames, a folder of frames or a file); a fixed-size model takes
        one image per row and no video."""
        if self.image.native:
            return self._native(texts, images, videos, first_index)
        texts, images, _ = self.rows(texts, images, videos, first_index)
        if not texts:
            raise InputError("nothing to preprocess: empty input")
        for row, image in enumerate(images):
            if isinstance(image, (list, tuple)):
                raise InputTypeError(
                    f"images[{first_index + row}] is a list: several images per row need a "
                    "native-resolution model; this one takes one image per row"
                )
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


def native_rows(
    texts: Sequence[str | None] | None,
    images: Sequence[Any] | None,
    videos: Sequence[Any] | None,
    first_index: int,
) -> tuple[list[str | None], list[Any], list[Any]]:
    """Validate a native-resolution batch: equal lengths, every row with some content."""
    if texts is None and images is None and videos is None:
        raise InputError("give texts, images, videos, or a mix")
    given = {
        name: _as_rows(value, name, kind)
        for name, value, kind in (
            ("texts", texts, "strings"),
            ("images", images, "images or lists of images"),
            ("videos", videos, "videos"),
        )
        if value is not None
    }
    lengths = {name: len(rows) for name, rows in given.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"texts, images and videos must have equal lengths (one row each), got {lengths}")
    count = next(iter(lengths.values()))
    rows = given.get("texts", [None] * count)
    pictures = given.get("images", [None] * count)
    clips = given.get("videos", [None] * count)
    for row, (text, image, video) in enumerate(zip(rows, pictures, clips)):
        i = first_index + row
        if text is not None and not isinstance(text, str):
            raise InputTypeError(f"texts[{i}] must be a string or None, got {type(text).__name__}")
        if text is None and image is None and video is None:
            raise InputError(f"row {i} has no text, image or video")
        if isinstance(image, (list, tuple)) and not image:
            raise InputError(f"images[{i}] is an empty list (give None for a row without images)")
        if text:
            check_unicode(text, f"texts[{i}]")
    return rows, pictures, clips


def placeholders(visual: Visual, merge: int) -> int | VideoSpan:
    """How a prompt holds ``visual``: its placeholder count, or for a video with timestamps
    (Qwen3-VL) a :class:`VideoSpan` whose steps a template writes apart."""
    if visual.timestamps is None:
        return visual.tokens(merge)
    steps = visual.grid[0]
    return VideoSpan(steps, visual.tokens(merge) // steps, visual.timestamps)
