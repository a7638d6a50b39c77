"""LaME — latent-reasoning multimodal embeddings in one forward pass.

``lame.load(ckpt).encode(texts=..., images=...)`` embeds; ``lame-train`` trains both stages.
Heavy imports (torch, transformers) happen on first use, so ``import lame`` stays cheap.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:  # the installed distribution's version: pyproject.toml is its one home
    __version__ = version("lame-embed")
except PackageNotFoundError:  # a source tree on sys.path that was never pip-installed
    __version__ = "0+unknown"


def load(checkpoint, device: str = "cpu"):
    """Load a trained checkpoint directory -> :class:`lame.model.LameModel` in eval mode on
    ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a missing GPU raises
    :class:`lame_runtime.errors.BackendError`). A model trained from ``--backbone-path`` loads
    without that directory (its architecture is in the checkpoint's config.json)."""
    from lame.checkpoint import load_model

    return load_model(checkpoint, device=device)


__all__ = ["load", "__version__"]
