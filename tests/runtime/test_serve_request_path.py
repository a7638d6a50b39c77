"""One request path: each text of a request is tokenised once (the usage count, the truncation
report and the model's input come from the same tokens), and the vectors are the Embedder's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

from runtime_fixtures import runtime_artifact  # noqa: E402,F401  (a fixture)
from serve_fixtures import ThreadServer  # noqa: E402

from lame_runtime import Embedder  # noqa: E402
from lame_runtime.serve.app import create_app  # noqa: E402
from lame_runtime.serve.config import ServeConfig  # noqa: E402

pytestmark = pytest.mark.runtime


def test_each_text_is_tokenised_once_and_matches_the_embedder(runtime_artifact):
    embedder = Embedder(runtime_artifact)
    text = embedder.preprocessor.text
    calls: list[str] = []
    real = text._encoding

    def counted(value):  # the real tokenizer, counted: every tokenisation passes here
        calls.append(str(value))
        return real(value)

    long_text = "word " * (text.max_text_tokens * 3)
    inputs = ["a first text", "another, longer text to embed", long_text]
    with ThreadServer(create_app(embedder, ServeConfig(model_name="m"))) as server:
        text._encoding = counted
        try:
            for input_type in ("query", "document"):
                calls.clear()
                answer = httpx.post(
                    server.url + "/v1/embeddings",
                    json={"model": "m", "input": inputs, "input_type": input_type},
                    timeout=60,
                )
                assert answer.status_code == 200, answer.text
                per_text = [
                    sum(1 for c in calls if body in c) for body in ("a first", "another", "word word")
                ]
                assert per_text == [1, 1, 1], (input_type, per_text, len(calls))
                body = answer.json()
                assert body["truncated"] == [2]
                vectors = np.asarray([row["embedding"] for row in body["data"]])
                text._encoding = real
                want = (embedder.encode_queries if input_type == "query" else embedder.encode_documents)(
                    inputs
                )
                text._encoding = counted
                assert (vectors * want).sum(1).min() >= 0.99999
                # usage: [BOS] + the text's tokens (cut to the limit) per row, as the model ran
                ids, mask = text.encode_rows(
                    [embedder_text for embedder_text in _formatted(embedder, inputs, input_type)],
                    [False] * 3,
                    0,
                )
                assert body["usage"]["prompt_tokens"] == int(mask.sum())
        finally:
            text._encoding = real


def _formatted(embedder: Embedder, inputs: list[str], input_type: str) -> list:
    from lame_runtime.inputs.preprocess import format_query

    if input_type == "query":
        chosen = embedder.query_instructions(inputs, [None] * len(inputs))
    else:
        chosen = [embedder.artifact.instruction("document")] * len(inputs)
    return [format_query(t, i) for t, i in zip(inputs, chosen)]
