"""The Python block of the docs' Serving page (docs/serving.md), run as written against a real server
(the only change: its address, 127.0.0.1:8080, becomes the test server's free port)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed")
pytest.importorskip("openai")

from runtime_fixtures import runtime_artifact  # noqa: E402,F401  (a fixture)
from serve_fixtures import ThreadServer, png_bytes  # noqa: E402

from lame_runtime import Embedder  # noqa: E402
from lame_runtime.serve.app import create_app  # noqa: E402
from lame_runtime.serve.config import ServeConfig  # noqa: E402

pytestmark = pytest.mark.runtime
README_ADDRESS = "http://127.0.0.1:8080"


def test_readme_serving_snippet_runs_as_written(runtime_artifact, tmp_path, monkeypatch):
    readme = (Path(__file__).parents[2] / "docs" / "serving.md").read_text()
    section = readme[readme.index("# Serving (`lame-serve`)") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert README_ADDRESS in snippet
    image = tmp_path / "data" / "digits" / "images" / "eval_00000.png"  # the main job's layout
    image.parent.mkdir(parents=True)
    image.write_bytes(png_bytes(3))
    embedder = Embedder(runtime_artifact)
    with ThreadServer(create_app(embedder, ServeConfig(model_name="lame-onnx"))) as server:
        monkeypatch.chdir(tmp_path)
        scope: dict = {}
        exec(compile(snippet.replace(README_ADDRESS, server.url), "docs/serving.md (serving)", "exec"), scope)
    vectors = np.array(scope["vectors"])
    want = np.concatenate(
        [
            embedder.encode_queries(["the digits add up to 12", "a seven"]),
            embedder.encode_queries(images=[image]),
        ]
    )
    assert vectors.shape == want.shape
    assert ((vectors * want).sum(1) >= 0.99999).all()
