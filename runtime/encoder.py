"""``Encoder``: the one encode signature shared by the runtime's ``Embedder`` and the training
side's ``lame.load(ckpt)`` model, so evaluation and applications take either.

Inputs come first (``texts``, ``images``: lists, aligned row by row; a native-resolution
model also takes ``videos=`` and a list of images per row); everything else is a keyword: ``instruction`` (prefixed the way training did; ``""`` or None: none),
``dimensions`` (a trained Matryoshka size; None: the full size) and ``batch_size``.
``encode_queries`` also takes ``task`` (pick that training task's query instruction).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

Texts = Sequence[Any] | None
Images = Sequence[Any] | None
F = TypeVar("F", bound=Callable[..., Any])


@runtime_checkable
class Encoder(Protocol):
    """Texts and/or images in, unit-norm float32 ``[N, dim]`` embeddings out."""

    def encode(
        self,
        texts: Texts = None,
        images: Images = None,
        *,
        videos: Images = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Each row as given, with ``instruction`` (if any) applied to every row."""
        ...

    def encode_queries(
        self,
        texts: Texts = None,
        images: Images = None,
        *,
        videos: Images = None,
        instruction: str | None = None,
        task: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Queries, each with the instruction it was trained with (or ``instruction``)."""
        ...

    def encode_documents(
        self,
        texts: Texts = None,
        images: Images = None,
        *,
        videos: Images = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Candidates (documents), with the document instruction if the model has one."""
        ...


def legacy_positional(*names: str) -> Callable[[F], F]:
    """Accept the old positional form ``f(texts, images, <names...>)`` for one release, with a
    DeprecationWarning naming the keywords to use; ``inspect.signature`` shows the new form."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(self: Any, texts: Any = None, images: Any = None, *extra: Any, **kwargs: Any) -> Any:
            if extra:
                if len(extra) > len(names):
                    raise TypeError(
                        f"{function.__qualname__}() takes texts and images positionally; "
                        f"pass {', '.join(names)} as keywords"
                    )
                spelled = ", ".join(f"{n}={v!r}" for n, v in zip(names, extra))
                warnings.warn(
                    f"passing {', '.join(names[: len(extra)])} positionally to "
                    f"{function.__qualname__}() is deprecated; use keywords: "
                    f"{function.__name__}(texts, images, {spelled})",
                    DeprecationWarning,
                    stacklevel=2,
                )
                for name, value in zip(names, extra):
                    if name in kwargs:
                        raise TypeError(f"{function.__qualname__}() got multiple values for {name!r}")
                    kwargs[name] = value
            return function(self, texts, images, **kwargs)

        return wrapper  # type: ignore[return-value]  # same call signature as function, plus the old form

    return decorate
