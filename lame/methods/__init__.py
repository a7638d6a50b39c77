"""The methods, one module each, and the registry that dispatches on ``config.method``.

A new method is one module defining a :class:`lame.methods.base.Method` subclass instance
``METHOD``, plus one line in ``_MODULES`` below.
"""

from __future__ import annotations

from importlib import import_module

from lame.methods.base import LameOutput, Method

# name -> module under lame.methods (the registry: one line per method).
_MODULES = {
    "lame": "lame",
    "discriminative": "discriminative",
    "latent": "latent",
    "cot": "cot",
    "lm": "lm",
}
METHODS = tuple(_MODULES)
_LOADED: dict[str, Method] = {}


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is a ValueError listing the methods."""
    if name not in _MODULES:
        raise ValueError(f"method must be one of {METHODS}, got {name!r}")
    if name not in _LOADED:
        method = import_module(f"lame.methods.{_MODULES[name]}").METHOD
        if method.name != name:
            raise RuntimeError(f"lame.methods.{_MODULES[name]} registers {method.name!r}, not {name!r}")
        _LOADED[name] = method
    return _LOADED[name]


def embedding_methods() -> tuple[str, ...]:
    """The methods whose embedding is trained for retrieval (not the lm pre-training)."""
    return tuple(name for name in METHODS if get_method(name).retrieval)


__all__ = ["embedding_methods", "METHODS", "LameOutput", "Method", "get_method"]
