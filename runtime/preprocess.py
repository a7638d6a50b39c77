"""One preprocessing entry point for training and serving: texts/images -> model feed dict."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lame_runtime.images import ImageConfig, preprocess_images
from lame_runtime.text import TextProcessor

TOKENIZER_FILE = "tokenizer.json"
PREPROCESSOR_FILE = "preprocessor_config.json"

# Names of the model inputs, shared by the PyTorch model and the exported ONNX graph.
INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values", "image_mask")


def format_query(text: str | None, instruction: str | None) -> str | None:
    """Prefix an instruction the way training did (one space between instruction and text)."""
    if not instruction:
        return text
    return f"{instruction} {text}" if text else instruction


class Preprocessor:
    def __init__(self, text: TextProcessor, image: ImageConfig):
        self.text = text
        self.image = image
        self.image_cache: dict[str, np.ndarray] | None = None  # set by training loops

    @classmethod
    def from_dir(cls, directory: str | Path) -> "Preprocessor":
        """Load ``tokenizer.json`` + ``preprocessor_config.json`` from a checkpoint or artifact."""
        directory = Path(directory)
        config_path = directory / PREPROCESSOR_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"missing {PREPROCESSOR_FILE} in {directory}")
        config = json.loads(config_path.read_text())
        text = TextProcessor(directory / TOKENIZER_FILE, config.get("max_text_tokens", 48))
        return cls(text, ImageConfig.from_dict(config["image"]))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.text.tokenizer.save(str(directory / TOKENIZER_FILE))
        config = {"max_text_tokens": self.text.max_text_tokens, "image": self.image.to_dict()}
        (directory / PREPROCESSOR_FILE).write_text(json.dumps(config, indent=2))

    def __call__(self, texts: Sequence[str | None] | None = None,
                 images: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        texts, images = align_inputs(texts, images)
        has_image = [image is not None for image in images]
        ids, mask = self.text.encode_rows(texts, has_image, self.image.num_tokens)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "pixel_values": preprocess_images(images, self.image, self.image_cache),
            "image_mask": np.asarray(has_image, dtype=np.int64),
        }


def align_inputs(texts: Sequence[str | None] | None,
           images: Sequence[Any] | None) -> tuple[list[str | None], list[Any]]:
    """Validate and pair texts with images: one (possibly interleaved) query per row."""
    if texts is None and images is None:
        raise ValueError("give texts, images, or both")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    texts = list(texts) if texts is not None else [None] * len(images)
    images = list(images) if images is not None else [None] * len(texts)
    if len(texts) != len(images):
        raise ValueError(f"texts and images must have equal lengths (one query per row), "
                         f"got {len(texts)} texts and {len(images)} images")
    if not texts:
        raise ValueError("nothing to encode: empty input")
    for i, (text, image) in enumerate(zip(texts, images)):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string or None, got {type(text).__name__}")
        if not text and image is None:
            raise ValueError(f"row {i} has neither text nor image")
    return texts, images
