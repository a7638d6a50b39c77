"""lame_runtime — torch-free serving of LaME embeddings (NumPy in, NumPy out).

This package never imports torch or transformers. It also owns the *one* implementation of
preprocessing (tokenisation with ``tokenizers``, image transforms with NumPy/Pillow); training in
``lame`` calls the same functions, so train/serve skew is impossible by construction.

Every expected failure raises a ``LameError`` subclass (``lame_runtime.errors``); each also
derives from the builtin a caller would catch (``InputError`` is a ``ValueError``, ...).
The runtime opens no network connection.

Layout (each sub-package's ``__init__`` says what lives there and what it may import):
``artifact/`` the contract, paths and atomic writes; ``inputs/`` preprocessing; ``engines/``
ONNX Runtime and TensorRT; ``retrieval/`` indexes and corpus indexing; ``deploy/`` Triton;
``cli/`` the command lines. ``Embedder`` and ``errors`` stay here.
"""

from lame_runtime.artifact.contract import Artifact
from lame_runtime.embedder import Embedder
from lame_runtime.errors import (
    ArtifactError,
    BackendError,
    IndexFileError,
    InputError,
    InputTypeError,
    IntegrityError,
    LameError,
    MissingFileError,
)
from lame_runtime.inputs.images import ImageConfig, load_image, preprocess_images
from lame_runtime.inputs.preprocess import Preprocessor, format_query
from lame_runtime.inputs.text import SPECIAL_TOKENS, TextProcessor
from lame_runtime.retrieval.ann import AnnIndex  # faiss is imported only when an AnnIndex is built
from lame_runtime.retrieval.index import Index
from lame_runtime.retrieval.qdrant_store import QdrantStore  # likewise qdrant-client

__all__ = [
    "Embedder",
    "Index",
    "AnnIndex",
    "QdrantStore",
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
