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
``cli/`` the command lines. ``Embedder`` (``embedder``), its ``RuntimeOptions`` (``options``), the
``Encoder`` protocol (``encoder``) and ``errors`` stay here.
"""

from importlib import metadata as _metadata

from lame_runtime.artifact.contract import Artifact
from lame_runtime.embedder import Embedder
from lame_runtime.encoder import Encoder
from lame_runtime.errors import (
    ArtifactError,
    BackendError,
    BusyError,
    CheckpointError,
    GateError,
    IndexFileError,
    InputError,
    InputTypeError,
    IntegrityError,
    LameError,
    MissingFileError,
    StoreError,
)
from lame_runtime.inputs.native import Video
from lame_runtime.options import RuntimeOptions
from lame_runtime.retrieval.ann import AnnIndex  # faiss is imported only when an AnnIndex is built
from lame_runtime.retrieval.index import Index
from lame_runtime.retrieval.qdrant_store import QdrantStore  # likewise qdrant-client

try:
    __version__ = _metadata.version("lame-embed")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# What an application uses. Preprocessing helpers (load_image, Preprocessor, format_query,
# TextProcessor, ...) stay importable from their modules under lame_runtime.inputs.
__all__ = [
    "__version__",
    "Embedder",
    "RuntimeOptions",
    "Encoder",
    "Video",
    "Index",
    "AnnIndex",
    "QdrantStore",
    "Artifact",
    "LameError",
    "ArtifactError",
    "InputError",
    "InputTypeError",
    "MissingFileError",
    "IntegrityError",
    "IndexFileError",
    "BackendError",
    "BusyError",
    "CheckpointError",
    "GateError",
    "StoreError",
]
