"""LaME — latent-reasoning multimodal embeddings in one forward pass.

``lame.load(ckpt).encode(texts=..., images=...)`` embeds; ``lame-train`` trains both stages.
Heavy imports (torch, transformers) happen on first use, so ``import lame`` stays cheap.
"""

from __future__ import annotations

from lame_runtime._moved import install as _install_moved_modules

__version__ = "0.1.0"


def load(checkpoint, device: str = "cpu"):
    """Load a trained checkpoint directory -> :class:`lame.model.LameModel` in eval mode on
    ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a missing GPU raises
    :class:`lame_runtime.errors.BackendError`). A model trained from ``--backbone-path`` loads
    without that directory (its architecture is in the checkpoint's config.json)."""
    from lame.checkpoint import load_model

    return load_model(checkpoint, device=device)


# The flat 0.1 layout's module paths (``lame.train``, ``lame.evaluate``, ...) keep importing for
# one release, aliased with a DeprecationWarning to their homes in training/ and evaluation/.
_MOVED = {
    "train": "training.train",
    "objective": "training.objective",
    "gradcache": "training.gradcache",
    "distributed": "training.distributed",
    "lora": "training.lora",
    "evaluate": "evaluation.evaluate",
    "stats": "evaluation.stats",
    "plots": "evaluation.plots",
    "bench": "evaluation.bench",
}
_install_moved_modules("lame", _MOVED)

__all__ = ["load", "__version__"]
