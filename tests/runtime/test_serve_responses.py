"""The /v1/embeddings body written directly: the numbers read back as the exact float32
vectors, in fewer bytes than Python's float reprs; base64 is the float32 bytes."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from lame_runtime.errors import LameError
from lame_runtime.serve.responses import embeddings_body

pytestmark = pytest.mark.runtime


def test_float_vectors_read_back_exactly_in_fewer_bytes():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4, 256)).astype(np.float32)
    vectors[0, :3] = [1e-30, -0.0, 3.4e38]  # tiny, signed zero, near float32's max
    body = embeddings_body(vectors, "float", "m\u00e9", 17, [2])
    answer = json.loads(body)
    back = np.array([item["embedding"] for item in answer["data"]], dtype=np.float32)
    assert np.array_equal(back, vectors)
    assert [item["index"] for item in answer["data"]] == [0, 1, 2, 3]
    assert answer["model"] == "m\u00e9" and answer["truncated"] == [2]
    assert answer["usage"] == {"prompt_tokens": 17, "total_tokens": 17}
    assert answer["object"] == "list" and answer["data"][0]["object"] == "embedding"
    reprs = json.dumps([v.tolist() for v in vectors]).encode()
    assert len(body) < 0.75 * len(reprs)


def test_base64_is_little_endian_float32():
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    answer = json.loads(embeddings_body(vectors, "base64", "m", 1, []))
    decoded = [np.frombuffer(base64.b64decode(item["embedding"]), "<f4") for item in answer["data"]]
    assert np.array_equal(np.stack(decoded), vectors)


def test_a_non_finite_vector_is_an_error_not_invalid_json():
    with pytest.raises(LameError, match="non-finite"):
        embeddings_body(np.array([[np.nan, 0.0]], dtype=np.float32), "float", "m", 1, [])
