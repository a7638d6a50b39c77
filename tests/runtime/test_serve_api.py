"""lame-serve's endpoints through real clients: the official ``openai`` package and ``httpx``
against uvicorn on 127.0.0.1 (a thread of this process, sharing the reference Embedder), and the
app mounted without a socket (Starlette's TestClient) for artifact variants."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from runtime_fixtures import runtime_artifact  # noqa: E402,F401  (a fixture)
from serve_fixtures import KEY, ThreadServer, data_uri, png_bytes  # noqa: E402

from lame_runtime import Embedder, Index  # noqa: E402
from lame_runtime.inputs.preprocess import format_query  # noqa: E402
from lame_runtime.serve.app import TRUNCATED_HEADER, create_app  # noqa: E402
from lame_runtime.serve.config import ServeConfig  # noqa: E402
from lame_runtime.serve.documents import Documents  # noqa: E402

pytestmark = pytest.mark.runtime
SAME = 0.99999  # cosine between served and in-process vectors (the bar)
NAME = "tiny-test"


@pytest.fixture(scope="module")
def embedder(runtime_artifact) -> Embedder:
    return Embedder(runtime_artifact)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("image-root")
    for i in range(3):
        (root / f"img{i}.png").write_bytes(png_bytes(i))
    return root


@pytest.fixture(scope="module")
def server(embedder, images, tmp_path_factory):
    index_path = tmp_path_factory.mktemp("served") / "index"
    documents = Documents.open_index(index_path, embedder.dim, writable=True, save_interval_s=0)
    config = ServeConfig(
        model_name=NAME,
        image_root=images,
        api_keys=(KEY,),
        writable=True,
        max_items=8,
        max_body_bytes=256 * 1024,
        request_timeout_s=20,
    )
    with ThreadServer(create_app(embedder, config, documents)) as running:
        running.index_path = index_path
        yield running


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_openai_client_text_matches_embedder(server, embedder):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-for-reads")
    texts = ["a handwritten three", "seven", "the digit zero, written small"]
    want = embedder.encode_queries(texts)
    # usage: the positions the model attends to in the rows the preprocessor builds
    instructions = embedder.query_instructions(texts, [None] * len(texts))
    usage = int(
        embedder.preprocessor([format_query(t, i) for t, i in zip(texts, instructions)])[
            "attention_mask"
        ].sum()
    )
    for encoding in ("float", "base64", None):
        # None: the client asks for base64 itself and decodes it; asked for, it does not
        extra = {"encoding_format": encoding} if encoding else {}
        got = client.embeddings.create(model=NAME, input=texts, **extra)
        vectors = np.array(
            [
                np.frombuffer(base64.b64decode(item.embedding), "<f4")
                if encoding == "base64"
                else item.embedding
                for item in got.data
            ],
            np.float32,
        )
        assert [item.index for item in got.data] == [0, 1, 2]
        assert cosines(vectors, want).min() >= SAME
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert got.model == NAME and got.usage.prompt_tokens == usage
    single = client.embeddings.create(model=NAME, input="seven")
    assert cosines([single.data[0].embedding], want[1:2])[0] >= SAME


def test_openai_client_data_uri_image_matches_embedder(server, embedder, images):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-for-reads")
    uri = data_uri((images / "img1.png").read_bytes())
    want = embedder.encode_queries(images=[images / "img1.png"])
    parts = client.embeddings.create(model=NAME, input=[[{"type": "image_url", "image_url": {"url": uri}}]])
    infinity = client.embeddings.create(model=NAME, input=[uri], extra_body={"modality": "image"})
    for got in (parts, infinity):
        assert cosines([got.data[0].embedding], want)[0] >= SAME
    mixed = client.embeddings.create(
        model=NAME,
        input=[
            [{"type": "text", "text": "a digit"}, {"type": "image_url", "image_url": uri}],
            {"text": "a digit", "image": "img1.png"},
        ],  # the second: a path under --image-root
        extra_body={"task": "tier1.read.i2t"},
    )  # text+image queries: the trained task's
    want = embedder.encode_queries(["a digit"] * 2, [images / "img1.png"] * 2, task="tier1.read.i2t")
    assert cosines([d.embedding for d in mixed.data], want).min() >= SAME


@pytest.mark.filterwarnings("ignore:text of .* truncated")  # the runtime's, on the server thread
def test_documents_input_type_and_truncation(server, embedder):
    texts = ["one", "two"]
    got = httpx.post(
        server.url + "/v1/embeddings", json={"model": NAME, "input": texts, "input_type": "document"}
    ).json()
    want = embedder.encode_documents(texts)
    assert cosines([d["embedding"] for d in got["data"]], want).min() >= SAME
    long = " ".join(["digit"] * (4 * embedder.preprocessor.text.max_text_tokens))
    answer = httpx.post(server.url + "/v1/embeddings", json={"model": NAME, "input": ["short", long]})
    assert answer.status_code == 200
    assert answer.headers[TRUNCATED_HEADER] == "1" and answer.json()["truncated"] == [1]


def test_search_add_delete(server, embedder, images):
    url, auth = server.url, {"Authorization": f"Bearer {KEY}"}
    docs = [
        {"id": f"text/{i}", "text": t, "payload": {"n": i}}
        for i, t in enumerate(["zero", "one", "two", "three"])
    ]
    docs.append({"id": "image/1", "image": data_uri((images / "img1.png").read_bytes())})
    assert httpx.post(url + "/v1/documents", json={"documents": docs}).status_code == 401
    added = httpx.post(url + "/v1/documents", json={"documents": docs}, headers=auth)
    assert added.status_code == 200 and added.json()["added"] == len(docs)
    hits = httpx.post(url + "/v1/search", json={"query": "two", "k": 3}).json()["data"]
    # the same ranking as searching the served vectors in-process
    reference = Index(embedder.dim)
    reference.add(
        embedder.encode_documents([d["text"] for d in docs[:4]] + [None], [None] * 4 + [images / "img1.png"]),
        [d["id"] for d in docs],
    )
    scores, ids = reference.search(embedder.encode_queries(["two"]), k=3)
    assert [h["id"] for h in hits] == ids[0]
    assert np.allclose([h["score"] for h in hits], scores[0], atol=1e-5)
    assert {h["id"]: h["payload"] for h in hits}.get("text/2") == {"n": 2}
    only = httpx.post(
        url + "/v1/search", json={"query": {"image": "img1.png"}, "k": 2, "prefix": "image/"}
    ).json()["data"]
    assert [h["id"] for h in only] == ["image/1"]
    gone = httpx.request("DELETE", url + "/v1/documents", json={"ids": ["text/2"]}, headers=auth)
    assert gone.status_code == 200
    hits = httpx.post(url + "/v1/search", json={"query": "two", "k": 5}).json()["data"]
    assert "text/2" not in [h["id"] for h in hits] and len(hits) == len(docs) - 1


def test_health_ready_models_metrics(server, embedder):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").json()["status"] == "ready"
    models = openai.OpenAI(base_url=server.url + "/v1", api_key="x").models.list()
    assert [m.id for m in models.data] == [NAME]
    httpx.post(server.url + "/v1/embeddings", json={"model": NAME, "input": ["a", "b"]})
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "lame_requests_total",
        "lame_request_seconds_bucket",
        "lame_batch_rows_bucket",
        "lame_queue_rows",
        'lame_rows_total{graph="text"}',
        "lame_provider_info",
        "lame_provider_fallbacks",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
    provider = [line for line in text.splitlines() if line.startswith("lame_provider_info")]
    assert any('provider="CPUExecutionProvider"' in line for line in provider), provider


def test_cors_is_off_by_default(server):
    answer = httpx.options(
        server.url + "/v1/embeddings",
        headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in answer.headers


def test_concurrent_requests_get_their_own_vectors(server, embedder):
    """Concurrent single-item requests (batched together when they meet in the queue) each
    get their own vector, and every request is counted in exactly one model call."""
    texts = [f"digit number {i}" for i in range(24)]
    want = embedder.encode_queries(texts)
    before = _metric(server, "lame_batch_requests_sum")
    with httpx.Client() as client, concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(
                lambda t: client.post(server.url + "/v1/embeddings", json={"model": NAME, "input": t}).json(),
                texts,
            )
        )
    got = np.array([a["data"][0]["embedding"] for a in answers])
    assert cosines(got, want).min() >= SAME
    assert _metric(server, "lame_batch_requests_sum") - before == len(texts)


def test_queued_jobs_coalesce_up_to_max_batch_and_are_never_split(embedder):
    """Jobs waiting in the queue go to the model together, up to max_batch rows; a job that
    would overflow the batch waits for the next one (the worker starts after the submits, so
    the grouping is certain). Mixed text and image rows: one call, both graphs."""
    import asyncio

    from lame_runtime.serve.batching import Batcher

    calls: list[int] = []

    def encode(texts, images):
        calls.append(len(texts))
        return embedder.encode(texts, images)

    image = np.asarray(
        __import__("PIL.Image", fromlist=["Image"])
        .open(__import__("io").BytesIO(png_bytes(0)))
        .convert("RGB")
    )
    jobs_rows = [(["a", None, "b"], [None, image, None]) for _ in range(5)]

    async def scenario():
        batcher = Batcher(encode, max_batch=8, max_wait_s=0)
        jobs = [batcher.submit(t, i) for t, i in jobs_rows]
        batcher.start()
        out = [await job.future for job in jobs]
        batcher.stop(timeout=10)
        return out

    results = asyncio.run(scenario())
    assert calls == [6, 6, 3]
    want = embedder.encode(*jobs_rows[0])
    for vectors in results:
        assert cosines(vectors, want).min() >= SAME


def _metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_full_queue_answers_503_with_retry_after(embedder):
    """A queue of max_queue rows: a burst beyond it is refused at once, then served again.
    The model thread is held behind a gate, so the burst overflows whatever the machine's speed."""
    config = ServeConfig(model_name=NAME, max_batch=1, max_items=8, max_queue=8, max_wait_ms=0)
    rows = [{"image": data_uri(png_bytes(i))} for i in range(8)]
    app = create_app(embedder, config)
    batcher, gate = app.state.service.batcher, threading.Event()
    with (
        ThreadServer(app) as running,
        httpx.Client() as client,
        concurrent.futures.ThreadPoolExecutor(16) as pool,
    ):
        real = batcher._encode  # the warm-up ran through it
        batcher._encode = lambda texts, images: (gate.wait(30), real(texts, images))[1]
        futures = [
            pool.submit(client.post, running.url + "/v1/embeddings", json={"model": NAME, "input": rows})
            for _ in range(16)
        ]
        # one request held by the worker, at most one queued (8 rows): the rest refused at once
        deadline = time.monotonic() + 30
        while sum(f.done() for f in futures) < 14 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        answers = [f.result() for f in futures]
        statuses = [a.status_code for a in answers]
        retry = {a.headers.get("retry-after") for a in answers if a.status_code == 503}
        assert set(statuses) == {200, 503} and statuses.count(200) <= 2, statuses
        assert retry == {str(config.retry_after_s)}
        again = client.post(running.url + "/v1/embeddings", json={"model": NAME, "input": "x"})
        assert again.status_code == 200


def test_dimensions_where_the_manifest_lists_them(runtime_artifact, tmp_path):
    """An artifact whose manifest lists Matryoshka prefixes serves them renormalised; the
    others refuse (the bad-request table checks that)."""
    from starlette.testclient import TestClient

    copy = tmp_path / "matryoshka"
    shutil.copytree(runtime_artifact, copy)
    manifest_path = copy / "lame_artifact.json"
    manifest = json.loads(manifest_path.read_text())
    half = manifest["embedding_dim"] // 2
    manifest["matryoshka_dims"] = [half]
    manifest_path.write_text(json.dumps(manifest))
    embedder = Embedder(copy)
    with TestClient(
        create_app(embedder, ServeConfig(model_name=NAME)), base_url="http://127.0.0.1"
    ) as client:
        got = client.post(
            "/v1/embeddings",
            json={"model": NAME, "input": ["three"], "dimensions": half, "encoding_format": "base64"},
        ).json()
        vector = np.frombuffer(base64.b64decode(got["data"][0]["embedding"]), "<f4")
        full = embedder.encode_queries(["three"])[0]
        assert vector.shape == (half,)
        assert cosines([vector], [full[:half]])[0] >= SAME
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        assert client.get("/v1/models").json()["data"][0]["dimensions"] == [half, manifest["embedding_dim"]]
        refused = client.post("/v1/embeddings", json={"model": NAME, "input": "x", "dimensions": half + 1})
        assert refused.status_code == 400 and "dimensions" in refused.json()["error"]["message"]


def test_cancelled_jobs_are_never_computed(embedder):
    """A job whose client left (or timed out) while queued is dropped: the model never sees
    its rows. The worker starts after the cancel, so the order is certain."""
    import asyncio

    from lame_runtime.serve.batching import Batcher

    seen: list[list] = []

    def encode(texts, images):
        seen.append(list(texts))
        return embedder.encode(texts, images)

    async def scenario():
        batcher = Batcher(encode, max_batch=8, max_wait_s=0)
        keep = batcher.submit(["kept"], [None])
        dropped = batcher.submit(["dropped"], [None])
        batcher.cancel(dropped)
        assert batcher.depth == 1
        batcher.start()
        vectors = await keep.future
        batcher.stop(timeout=10)
        return vectors

    vectors = asyncio.run(scenario())
    assert seen == [["kept"]]
    assert cosines(vectors, embedder.encode(["kept"]))[0] >= SAME


def test_request_timeout_answers_504_and_the_server_recovers(embedder):
    """The model thread is held (the real encode, behind a gate) so the request cannot be
    served in time, whatever the machine's speed; released, the next request is served."""
    from starlette.testclient import TestClient

    config = ServeConfig(model_name=NAME, request_timeout_s=0.2)
    app = create_app(embedder, config)
    gate = threading.Event()
    batcher = app.state.service.batcher
    real = batcher._encode
    with TestClient(app, base_url="http://127.0.0.1") as client:  # the warm-up ran through the real encode
        batcher._encode = lambda texts, images: (gate.wait(30), real(texts, images))[1]
        answer = client.post("/v1/embeddings", json={"model": NAME, "input": "three"})
        assert answer.status_code == 504 and answer.json()["error"]["code"] == "timeout"
        assert 'lame_rejected_total{reason="timeout"} 1.0' in client.get("/metrics").text
        config.request_timeout_s = 30  # the recovery request must not race the 0.2 s limit
        gate.set()
        again = client.post("/v1/embeddings", json={"model": NAME, "input": "three"})
        assert again.status_code == 200
        assert cosines([again.json()["data"][0]["embedding"]], embedder.encode_queries(["three"]))[0] >= SAME


def test_cli_refuses_unsafe_or_inconsistent_options(runtime_artifact, tmp_path, capsys):
    from lame_runtime.serve.cli import main

    cases = [
        (["--writable", "--index", str(tmp_path / "i")], "--api-key-file"),
        (["--writable"], "--index or --qdrant"),
        (["--index", str(tmp_path / "i"), "--qdrant", str(tmp_path / "q")], "not both"),
        (["--auth-reads"], "--api-key-file"),
        (["--api-key-file", str(tmp_path / "missing.txt")], "not found"),
    ]
    (tmp_path / "short.txt").write_text("abc\n")
    cases.append((["--api-key-file", str(tmp_path / "short.txt")], "shorter than 16"))
    for args, words in cases:
        assert main(["--model", str(runtime_artifact), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("lame-serve: error: ") and words in err and err.count("\n") == 1


def test_qdrant_collection_search_and_add(embedder, tmp_path):
    """--qdrant: the same endpoints over a local Qdrant folder (upserts persist in Qdrant)."""
    pytest.importorskip("qdrant_client")
    from starlette.testclient import TestClient

    documents = Documents.open_qdrant(str(tmp_path / "qdrant"), "lame", embedder.dim, writable=True)
    config = ServeConfig(model_name=NAME, api_keys=(KEY,), writable=True)
    texts = ["zero", "one", "two"]
    with TestClient(create_app(embedder, config, documents), base_url="http://127.0.0.1") as client:
        added = client.post(
            "/v1/documents",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"documents": [{"id": f"t/{i}", "text": t, "payload": i} for i, t in enumerate(texts)]},
        )
        assert added.status_code == 200, added.text
        hits = client.post("/v1/search", json={"query": "two", "k": 3}).json()["data"]
        deleted = client.request(
            "DELETE", "/v1/documents", json={"ids": ["t/0"]}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert deleted.status_code == 403 and deleted.json()["error"]["code"] == "unsupported"
    reference = Index(embedder.dim)
    reference.add(embedder.encode_documents(texts), [f"t/{i}" for i in range(3)])
    scores, ids = reference.search(embedder.encode_queries(["two"]), k=3)
    assert [h["id"] for h in hits] == ids[0]
    assert np.allclose([h["score"] for h in hits], scores[0], atol=1e-4)
    assert [h["payload"] for h in hits] == [int(i.split("/")[1]) for i in ids[0]]


def test_client_disconnect_drops_its_queued_rows(embedder):
    """A client that hangs up while its rows wait in the queue: the rows leave the queue and
    never reach the model. The model thread is held on a first request meanwhile, so the
    second one is certainly still queued when its client leaves."""
    import socket

    config = ServeConfig(model_name=NAME)
    app = create_app(embedder, config)
    gate, seen = threading.Event(), []
    batcher = app.state.service.batcher
    real = batcher._encode

    def held(texts, images):
        seen.append(list(texts))
        gate.wait(30)
        return real(texts, images)

    def send(text: str) -> socket.socket:
        body = json.dumps({"model": NAME, "input": text}).encode()
        sock = socket.create_connection(("127.0.0.1", running.port))
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        return sock

    with ThreadServer(app) as running:
        batcher._encode = held
        first = send("first")
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:  # the worker holds "first"
            time.sleep(0.01)
        second = send("second")
        while batcher.depth == 0 and time.monotonic() < deadline:  # "second" is queued
            time.sleep(0.01)
        assert batcher.depth == 1
        second.close()
        while batcher.depth and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.depth == 0, "the hung-up request's rows stayed queued"
        gate.set()
        assert b"200 OK" in first.recv(65536)
        first.close()
        text = httpx.get(running.url + "/metrics").text
    tokenizer = embedder.preprocessor.text  # the model thread gets token rows: read them back
    assert len(seen) == 1 and "first" in tokenizer.decode(seen[0][0]), seen
    assert not any("second" in tokenizer.decode(row) for row in seen[0]), seen
    assert 'lame_rejected_total{reason="client_gone"} 1.0' in text


def test_cors_only_for_the_origins_named(embedder):
    from starlette.testclient import TestClient

    allowed = "https://app.example"
    config = ServeConfig(model_name=NAME, cors_origins=(allowed,))
    with TestClient(create_app(embedder, config), base_url="http://127.0.0.1") as client:
        for origin, expected in ((allowed, allowed), ("https://evil.example", None)):
            answer = client.options(
                "/v1/embeddings", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            )
            assert answer.headers.get("access-control-allow-origin") == expected
