"""One encode signature: the training-side model (``lame.load``) and the runtime's Embedder both
satisfy ``lame_runtime.Encoder`` (same parameter names, same keyword-only options) and give the
same vectors for the same inputs on the exported tiny model; the old call forms still work with
a DeprecationWarning."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import lame
from lame_runtime import Embedder, Encoder

RNG = np.random.default_rng(5)
TEXTS = ["the digits add up to 9", None, "7 3 1", "exactly 2 digits are greater than 6"]
IMAGES = [
    None,
    RNG.integers(0, 256, (40, 52, 3), dtype=np.uint8),
    None,
    RNG.integers(0, 256, (30, 30, 3), dtype=np.uint8),
]
METHODS = ("encode", "encode_queries", "encode_documents")


@pytest.fixture(scope="module")
def pair(trained_ckpt, artifact_dir):
    return lame.load(trained_ckpt), Embedder(artifact_dir)


def _names(function):
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values() if p.name != "self"]


def test_both_satisfy_the_protocol_with_the_same_parameters(pair):
    model, embedder = pair
    for encoder in pair:
        assert isinstance(encoder, Encoder)
    for method in METHODS:
        protocol = _names(getattr(Encoder, method))
        assert _names(getattr(embedder, method)) == protocol, method
        # LameModel.encode also takes the deprecated role= (through **legacy) for one release.
        model_params = [
            p for p in _names(getattr(model, method)) if p[1] is not inspect.Parameter.VAR_KEYWORD
        ]
        assert model_params == protocol, method


@pytest.mark.parametrize(
    "method, kwargs",
    [
        ("encode", {}),
        ("encode", {"instruction": "find the matching image:"}),
        ("encode_queries", {"instruction": "a query:"}),
        ("encode_documents", {}),
        ("encode_documents", {"instruction": ""}),
    ],
)
def test_same_vectors_from_pytorch_and_the_runtime(pair, method, kwargs):
    model, embedder = pair
    ours = getattr(model, method)(TEXTS, IMAGES, batch_size=3, **kwargs)
    served = getattr(embedder, method)(TEXTS, IMAGES, batch_size=3, **kwargs)
    assert ours.shape == served.shape == (len(TEXTS), embedder.dim)
    cosines = (ours * served).sum(axis=1)
    assert cosines.min() > 0.9999, cosines
    # Not trivially equal: the rows differ from each other, and instructions change them.
    assert np.abs(ours[0] - ours[2]).max() > 1e-3


def test_instruction_changes_the_vector(pair):
    model, embedder = pair
    for encoder in pair:
        plain = encoder.encode(["7 3 1"])
        instructed = encoder.encode(["7 3 1"], instruction="find the matching image:")
        assert np.abs(plain - instructed).max() > 1e-3


def test_old_call_forms_warn_and_agree(pair):
    model, embedder = pair
    with pytest.warns(DeprecationWarning, match="positionally"):
        old = embedder.encode(TEXTS, IMAGES, 2)
    np.testing.assert_allclose(old, embedder.encode(TEXTS, IMAGES, batch_size=2), atol=1e-6)
    with pytest.warns(DeprecationWarning, match="positionally"):
        embedder.encode_documents(TEXTS, IMAGES, 2, "")
    with pytest.warns(DeprecationWarning, match=r"encode_documents"):
        target = model.encode(TEXTS, IMAGES, role="target")
    np.testing.assert_allclose(target, model.encode_documents(TEXTS, IMAGES, instruction=""), atol=1e-6)
    with pytest.raises(TypeError, match="keywords"):
        embedder.encode(TEXTS, IMAGES, 2, None, "extra")
