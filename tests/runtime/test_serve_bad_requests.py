"""lame-serve's bad-request table (the README lists it): each bad request gets one status and
one OpenAI-shaped JSON error naming the problem, no traceback, and the server keeps serving."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

from runtime_fixtures import runtime_artifact  # noqa: E402,F401  (a fixture)
from serve_fixtures import KEY, ThreadServer, data_uri, png_bytes  # noqa: E402

from lame_runtime import Embedder  # noqa: E402
from lame_runtime.serve.app import create_app  # noqa: E402
from lame_runtime.serve.config import ServeConfig  # noqa: E402
from lame_runtime.serve.documents import Documents  # noqa: E402

pytestmark = pytest.mark.runtime
NAME = "tiny-test"
MAX_ITEMS = 4
MAX_BODY = 64 * 1024
GOOD = {"model": NAME, "input": ["a good request"]}
WRITE = {"Authorization": f"Bearer {KEY}"}


def _bomb() -> bytes:
    """A small PNG whose header declares more pixels than the default limit allows."""
    from PIL import Image

    from lame_runtime.inputs.images import default_max_pixels

    side = int(default_max_pixels() ** 0.5) + 100
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG")
    assert len(out.getvalue()) < MAX_BODY // 2  # tiny on the wire: the header is the bomb
    return out.getvalue()


def embed(value, **extra) -> dict:
    return {"model": NAME, "input": value, **extra}


def image_item(ref) -> list:
    return [{"type": "image_url", "image_url": {"url": ref}}]


# (name, method, path, body (dict: JSON; bytes: raw), headers, status, error code)
CASES = [
    (
        "malformed JSON",
        "POST",
        "/v1/embeddings",
        b'{"model": "tiny-test", "input": [',
        {},
        400,
        "invalid_json",
    ),
    ("body not UTF-8", "POST", "/v1/embeddings", b'{"input": "\xff\xfe"}', {}, 400, "invalid_json"),
    ("body is an array", "POST", "/v1/embeddings", b"[1, 2]", {}, 400, "invalid_json"),
    ("input missing", "POST", "/v1/embeddings", {"model": NAME}, {}, 400, "missing_field"),
    ("model missing", "POST", "/v1/embeddings", {"input": "x"}, {}, 400, "missing_field"),
    ("input a number", "POST", "/v1/embeddings", embed(5), {}, 400, "invalid_type"),
    ("input empty list", "POST", "/v1/embeddings", embed([]), {}, 400, "empty_input"),
    ("input empty string", "POST", "/v1/embeddings", embed(""), {}, 400, "empty_input"),
    ("item a number", "POST", "/v1/embeddings", embed(["ok", 1.5]), {}, 400, "invalid_type"),
    ("token ids", "POST", "/v1/embeddings", embed([1, 2, 3]), {}, 400, "invalid_input"),
    (
        "lone surrogate",
        "POST",
        "/v1/embeddings",
        b'{"model": "tiny-test", "input": "a\\ud800"}',
        {},
        400,
        "invalid_input",
    ),
    (
        "encoding_format int8",
        "POST",
        "/v1/embeddings",
        embed("x", encoding_format="int8"),
        {},
        400,
        "invalid_value",
    ),
    (
        "input_type unknown",
        "POST",
        "/v1/embeddings",
        embed("x", input_type="passage"),
        {},
        400,
        "invalid_value",
    ),
    (
        "dimensions unsupported",
        "POST",
        "/v1/embeddings",
        embed("x", dimensions=8),
        {},
        400,
        "unsupported_dimensions",
    ),
    ("unknown model", "POST", "/v1/embeddings", {"model": "gpt-4", "input": "x"}, {}, 404, "model_not_found"),
    ("too many items", "POST", "/v1/embeddings", embed(["x"] * (MAX_ITEMS + 1)), {}, 400, "too_many_items"),
    ("oversized body", "POST", "/v1/embeddings", embed("x" * (MAX_BODY + 10)), {}, 413, "payload_too_large"),
    (
        "bad base64",
        "POST",
        "/v1/embeddings",
        embed([image_item("data:image/png;base64,@@@=")]),
        {},
        400,
        "invalid_base64",
    ),
    (
        "not an image",
        "POST",
        "/v1/embeddings",
        embed([image_item(data_uri(b"this is plain text, not a PNG"))]),
        {},
        400,
        "invalid_image",
    ),
    (
        "data URI not an image type",
        "POST",
        "/v1/embeddings",
        embed([image_item(data_uri(b"hello", "text/plain"))]),
        {},
        400,
        "invalid_image",
    ),
    ("decompression bomb", "POST", "/v1/embeddings", None, {}, 400, "invalid_input"),
    (
        "remote URL",
        "POST",
        "/v1/embeddings",
        embed([image_item("https://example.com/cat.png")]),
        {},
        400,
        "remote_url_refused",
    ),
    (
        "path outside --image-root",
        "POST",
        "/v1/embeddings",
        embed([{"image": "../outside.png"}]),
        {},
        403,
        "path_not_allowed",
    ),
    (
        "absolute path outside --image-root",
        "POST",
        "/v1/embeddings",
        embed([{"image": "/etc/passwd"}]),
        {},
        403,
        "path_not_allowed",
    ),
    (
        "missing file under --image-root",
        "POST",
        "/v1/embeddings",
        embed([{"image": "nope.png"}]),
        {},
        400,
        "file_not_found",
    ),
    (
        "two images in one item",
        "POST",
        "/v1/embeddings",
        embed([image_item("img0.png") + image_item("img0.png")]),
        {},
        400,
        "too_many_images",
    ),
    (
        "unknown part type",
        "POST",
        "/v1/embeddings",
        embed([[{"type": "audio", "audio": "x"}]]),
        {},
        400,
        "invalid_value",
    ),
    (
        "item object with unknown keys",
        "POST",
        "/v1/embeddings",
        embed([{"txt": "x"}]),
        {},
        400,
        "invalid_input",
    ),
    ("search k zero", "POST", "/v1/search", {"query": "x", "k": 0}, {}, 400, "invalid_value"),
    ("search k a string", "POST", "/v1/search", {"query": "x", "k": "five"}, {}, 400, "invalid_type"),
    ("search without query", "POST", "/v1/search", {"k": 3}, {}, 400, "missing_field"),
    (
        "write without a key",
        "POST",
        "/v1/documents",
        {"documents": [{"id": "a", "text": "x"}]},
        {},
        401,
        "invalid_api_key",
    ),
    (
        "write with a wrong key",
        "POST",
        "/v1/documents",
        {"documents": [{"id": "a", "text": "x"}]},
        {"Authorization": "Bearer " + "x" * len(KEY)},
        401,
        "invalid_api_key",
    ),
    (
        "write with a non-bearer scheme",
        "POST",
        "/v1/documents",
        {"documents": [{"id": "a", "text": "x"}]},
        {"Authorization": "Basic " + KEY},
        401,
        "invalid_api_key",
    ),
    (
        "document without id",
        "POST",
        "/v1/documents",
        {"documents": [{"text": "x"}]},
        WRITE,
        400,
        "invalid_type",
    ),
    (
        "documents repeat an id",
        "POST",
        "/v1/documents",
        {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
        WRITE,
        400,
        "duplicate_id",
    ),
    ("delete an unknown id", "DELETE", "/v1/documents", {"ids": ["never-added"]}, WRITE, 404, "unknown_id"),
    ("unknown endpoint", "GET", "/v1/nothing", None, {}, 404, "404"),
    ("wrong method", "GET", "/v1/embeddings", None, {}, 405, "405"),
]


@pytest.fixture(scope="module")
def server(runtime_artifact, tmp_path_factory):
    root = tmp_path_factory.mktemp("image-root")
    (root / "img0.png").write_bytes(png_bytes(0))
    (root.parent / "outside.png").write_bytes(png_bytes(1))  # exists: refused for its place
    embedder = Embedder(runtime_artifact)
    documents = Documents.open_index(
        tmp_path_factory.mktemp("idx") / "index", embedder.dim, writable=True, save_interval_s=0
    )
    config = ServeConfig(
        model_name=NAME,
        image_root=root,
        api_keys=(KEY,),
        writable=True,
        max_items=MAX_ITEMS,
        max_body_bytes=MAX_BODY,
    )
    with ThreadServer(create_app(embedder, config, documents)) as running:
        yield running


def test_the_table_is_large_enough():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(server, case):
    name, method, path, body, headers, status, code = case
    if name == "decompression bomb":
        body = embed([image_item(data_uri(_bomb()))])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        if isinstance(body, bytes):
            answer = client.request(
                method, path, content=body, headers={"Content-Type": "application/json", **headers}
            )
        else:
            answer = client.request(method, path, json=body, headers=headers)
        assert answer.status_code == status, answer.text
        error = answer.json()
        assert set(error) == {"error"} and set(error["error"]) >= {"message", "type", "code"}
        assert error["error"]["code"] == code, error
        message = error["error"]["message"]
        assert message and "\n" not in message
        assert "Traceback" not in answer.text and 'File "' not in answer.text
        if status == 401:
            assert answer.headers["www-authenticate"] == "Bearer"
        good = client.post("/v1/embeddings", json=GOOD)  # the server keeps serving
        assert good.status_code == 200 and len(good.json()["data"]) == 1


def test_a_request_that_is_no_bigger_than_the_limits_passes(server):
    """The limits are limits, not off by one: MAX_ITEMS items are fine."""
    answer = httpx.post(server.url + "/v1/embeddings", json=embed(["x"] * MAX_ITEMS))
    assert answer.status_code == 200 and len(answer.json()["data"]) == MAX_ITEMS
