"""Property-based tests (hypothesis) of the runtime's preprocessing and Embedder.encode: any
input either gives a well-formed result or raises a documented LameError, never anything else."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lame_runtime import Embedder  # noqa: E402
from lame_runtime.errors import LameError  # noqa: E402
from lame_runtime.inputs.text import SPECIAL_TOKENS  # noqa: E402

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

texts = st.one_of(
    st.none(),
    st.text(max_size=80),
    st.lists(
        st.one_of(
            st.sampled_from(sorted(SPECIAL_TOKENS.values())),
            st.sampled_from(["the digits are", "3", "and", " ", "\n", "é", "\x00"]),
        ),
        max_size=12,
    ).map("".join),
)


@st.composite
def image_arrays(draw):
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int16, np.bool_]))
    shape = draw(
        st.one_of(
            st.tuples(st.integers(0, 40), st.integers(0, 90)),
            st.tuples(st.integers(0, 40), st.integers(0, 90), st.integers(1, 5)),
            st.lists(st.integers(0, 6), min_size=0, max_size=5).map(tuple),
        )
    )
    size = int(np.prod(shape)) if shape else 1
    if size > 20000:
        shape = (16, 64, 3)
    kind = draw(st.sampled_from(["random", "zeros", "ones", "nan", "big"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "random":
        base = rng.random(shape)
    elif kind == "zeros":
        base = np.zeros(shape)
    elif kind == "ones":
        base = np.ones(shape)
    elif kind == "nan":
        base = np.full(shape, np.nan)
    else:
        base = np.full(shape, 1e6)
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        base = np.nan_to_num(base * info.max, nan=0, posinf=info.max).clip(info.min, info.max)
    return base.astype(dtype)


images = st.one_of(st.none(), image_arrays())


@pytest.fixture(scope="module")
def embedder(artifact_dir) -> Embedder:
    return Embedder(artifact_dir)


@SETTINGS
@given(rows=st.lists(st.tuples(texts, images), min_size=1, max_size=4))
def test_preprocessing_is_well_formed_or_raises_documented(embedder, rows):
    pre = embedder.preprocessor
    structural = {i for role, i in pre.text.special.items() if role not in ("unk", "image", "bos", "pad")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            feed = pre([t for t, _ in rows], [i for _, i in rows])
    except LameError:
        return
    n = len(rows)
    assert feed["input_ids"].shape == feed["attention_mask"].shape
    assert feed["input_ids"].shape[0] == n and feed["input_ids"].dtype == np.int64
    assert feed["pixel_values"].shape == (n, pre.image.num_patches, pre.image.patch_dim)
    assert np.isfinite(feed["pixel_values"]).all()
    assert feed["image_mask"].tolist() == [int(i is not None) for _, i in rows]
    assert not structural.intersection(np.unique(feed["input_ids"]).tolist())
    images_per_row = (feed["input_ids"] == pre.text.special["image"]).sum(axis=1)
    assert images_per_row.tolist() == [pre.image.num_tokens * (i is not None) for _, i in rows]


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(st.tuples(texts, images), min_size=0, max_size=3), batch_size=st.integers(1, 3))
def test_encode_outputs_unit_rows_or_raises_documented(embedder, rows, batch_size):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = embedder.encode(
                texts=[t for t, _ in rows], images=[i for _, i in rows], batch_size=batch_size
            )
    except LameError:
        return
    assert out.shape == (len(rows), embedder.dim) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
