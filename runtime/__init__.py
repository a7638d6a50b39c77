"""lame_runtime — torch-free serving of LaME embeddings (NumPy in, NumPy out).

This package never imports torch or transformers. It also owns the *one* implementation of
preprocessing (tokenisation with ``tokenizers``, image transforms with NumPy/Pillow); training in
``lame`` calls the same functions, so train/serve skew is impossible by construction.

Every expected failure raises a ``LameError`` subclass (``lame_runtime.errors``); each also
derives from the builtin a caller would catch (``InputError`` is a ``ValueError``, ...).
The runtime opens no network connection.
"""
from lame_runtime.errors import (ArtifactError, BackendError, IndexFileError, InputError,
                                 InputTypeError, IntegrityError, LameError, MissingFileError)
from lame_runtime.images import ImageConfig, load_image, preprocess_images
from lame_runtime.text import SPECIAL_TOKENS, TextProcessor
from lame_runtime.preprocess import Preprocessor, format_query
from lame_runtime.artifact import Artifact
from lame_runtime.embedder import Embedder
from lame_runtime.index import Index

__all__ = [
    "Embedder",
    "Index",
    "Artifact",
    "ArtifactError",
    "ImageConfig",
    "load_image",
    "preprocess_images",
    "SPECIAL_TOKENS",
    "TextProcessor",
    "Preprocessor",
    "format_query",
    "LameError",
    "InputError",
    "InputTypeError",
    "MissingFileError",
    "IntegrityError",
    "IndexFileError",
    "BackendError",
]
