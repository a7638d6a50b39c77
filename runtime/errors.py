"""One small exception hierarchy for every LaME package (no torch here, so all can import it).

Each class also derives from the builtin a caller would naturally catch (``ValueError`` for a
bad argument, ``FileNotFoundError`` for a missing file, ...), so ``except ValueError`` keeps
working; CLIs catch ``LameError`` and print one ``error: ...`` line.
"""

from __future__ import annotations


class LameError(Exception):
    """Base class: an expected failure with a message written for the user."""


class InputError(LameError, ValueError):
    """A bad argument or data item (text, image, feed, vector, id); the message names it."""


class InputTypeError(LameError, TypeError):
    """An argument of the wrong type (e.g. a single string where a list is expected)."""


class MissingFileError(LameError, FileNotFoundError):
    """A file or folder the call needs does not exist."""


class IntegrityError(LameError, ValueError):
    """A file does not match the size or sha256 recorded for it, or points outside its folder."""


class ArtifactError(LameError, RuntimeError):
    """An export artifact is missing, incomplete, tampered with or from a newer format."""


class CheckpointError(LameError, RuntimeError):
    """A training checkpoint is missing, incomplete or does not match its config."""


class IndexFileError(LameError, ValueError):
    """A saved index is missing, corrupt, or its files come from different saves."""


class BackendError(LameError, RuntimeError):
    """An inference backend or device is unavailable or incompatible (TensorRT, CUDA, ORT)."""


class BusyError(LameError, RuntimeError):
    """Another process is writing the same output (index, artifact): one writer at a time."""


class StoreError(BackendError):
    """A vector store (Qdrant) failed or cannot be reached; the message names its URL/folder."""


class GateError(LameError, RuntimeError):
    """An export parity or retrieval gate failed; nothing was written."""
