"""Acknowledged writes survive; rejected ones leave no trace. Real ``lame-serve`` processes on
127.0.0.1 over real HTTP, restarted between phases; the document set is read back from the
restarted server and from the saved files."""

from __future__ import annotations

import concurrent.futures
import json
import random
import signal

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

from runtime_fixtures import runtime_artifact  # noqa: E402,F401  (a fixture)
from serve_fixtures import KEY, ServerProcess, data_uri, png_bytes, write_key_file  # noqa: E402

from lame_runtime import Index  # noqa: E402

pytestmark = pytest.mark.runtime
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
CLIENTS = 4
WRITES_PER_CLIENT = 12  # per phase; every id fits one k=100 search of the restarted server


def start(runtime_artifact, index_path, key_file, writable: bool = True) -> ServerProcess:
    args = ["--model", str(runtime_artifact), "--index", str(index_path), "--api-key-file", str(key_file)]
    return ServerProcess(*args, *(["--writable", "--save-interval", "0"] if writable else []))


def stop(server: ServerProcess) -> None:
    server.signal(signal.SIGTERM)
    code, err = server.wait(120)
    assert code == 0, err[-2000:]


def served_ids(server: ServerProcess) -> dict[str, object]:
    """Every document the server holds (id -> payload), through its own search."""
    answer = httpx.post(server.url + "/v1/search", json={"query": "anything", "k": 100}, timeout=60)
    assert answer.status_code == 200, answer.text
    return {hit["id"]: hit["payload"] for hit in answer.json()["data"]}


def add(client: httpx.Client, raw: str) -> httpx.Response:
    return client.post("/v1/documents", content=raw.encode(), headers=AUTH)


def test_an_unencodable_add_is_refused_and_every_acknowledged_one_survives_a_restart(
    runtime_artifact, tmp_path
):
    """Class 1: an id or payload holding a lone surrogate used to be inserted before the
    response failed (500); every later search and save then failed, and the adds acknowledged
    after it were gone at shutdown."""
    index_path, key_file = tmp_path / "index", write_key_file(tmp_path)
    poison = [
        '{"documents": [{"id": "bad\\ud800", "text": "x"}]}',
        '{"documents": [{"id": "p1", "text": "x", "payload": {"k\\udc00": 1}}]}',
        '{"documents": [{"id": "p2", "text": "x", "payload": {"k": ["\\ud83d"]}}]}',
        '{"documents": [{"id": "p3", "text": "x", "payload": ' + "[" * 200 + "]" * 200 + "}]}",
        '{"documents": [{"id": "p4", "text": "x", "payload": NaN}]}',
    ]
    with start(runtime_artifact, index_path, key_file) as server, httpx.Client(base_url=server.url) as client:
        assert (
            add(
                client, json.dumps({"documents": [{"id": "a", "text": "first", "payload": {"n": 1}}]})
            ).status_code
            == 200
        )
        for raw in poison:
            answer = add(client, raw)
            assert answer.status_code == 400, answer.text
        pair = "\U0001f600 \u00e9"  # a real surrogate pair and non-ASCII are fine
        answer = add(
            client,
            json.dumps({"documents": [{"id": "b" + pair, "text": "second", "payload": {pair: [pair]}}]}),
        )
        assert answer.status_code == 200, answer.text
        assert set(served_ids(server)) == {"a", "b" + pair}
        assert client.get("/ready").status_code == 200
        stop(server)
    with start(runtime_artifact, index_path, key_file, writable=False) as server:
        assert served_ids(server) == {"a": {"n": 1}, "b" + pair: {pair: [pair]}}
        stop(server)
    assert set(Index.load(index_path).ids) == {"a", "b" + pair}


def _write(rng: random.Random, client: httpx.Client, tag: str) -> tuple[str, str | None, object]:
    """One random write, valid or not -> (outcome, id, payload): outcome is "ok" (200) or
    "refused" (4xx); the id is the one a refused write must not leave behind."""
    doc_id = f"{tag}-{rng.randrange(10**9)}"
    payload: object = {"tag": tag, "n": rng.randrange(1000), "nested": [{"x": "y"}]}
    kind = rng.choice(["good", "good", "good", "id", "key", "value", "nan", "deep", "image", "type", "dup"])
    doc: dict = {"id": doc_id, "text": f"document {doc_id}", "payload": payload}
    raw = None
    if kind == "id":
        raw = json.dumps({"documents": [doc]}).replace(f'"{doc_id}"', f'"{doc_id}\\udbff"', 1)
    elif kind == "key":
        raw = json.dumps({"documents": [doc]}).replace('"tag"', '"t\\udc80g"', 1)
    elif kind == "value":
        raw = json.dumps({"documents": [doc]}).replace('"y"', '"\\ud800y"', 1)
    elif kind == "nan":
        raw = json.dumps({"documents": [doc]}).replace('"n": ', '"n": NaN, "m": ', 1)
    elif kind == "deep":
        doc["payload"] = json.loads("[" * 100 + "]" * 100)
    elif kind == "image":
        doc["image"] = data_uri(b"not a png at all")
    elif kind == "type":
        doc["text"] = 5
    elif kind == "dup":  # a good document and a bad one in one request: all or nothing
        raw = json.dumps(
            {"documents": [doc, {"id": doc_id + "-2", "text": "x", "payload": {"v": "\ud800"}}]},
            ensure_ascii=True,
        )
    answer = add(client, raw if raw is not None else json.dumps({"documents": [doc]}))
    if kind == "good":
        assert answer.status_code == 200, answer.text
        return "ok", doc_id, payload
    assert 400 <= answer.status_code < 500, (kind, answer.text)
    assert set(answer.json()["error"]) >= {"message", "type", "code"}
    return "refused", doc_id, None


def test_stress_mixed_writes_from_several_clients_across_restarts(runtime_artifact, tmp_path):
    index_path, key_file = tmp_path / "index", write_key_file(tmp_path)
    acknowledged: dict[str, object] = {}
    refused: set[str] = set()
    for phase in range(2):
        with start(runtime_artifact, index_path, key_file) as server:
            if phase:
                assert served_ids(server) == acknowledged  # the first phase's writes, exactly

            def client_run(n: int, url: str = server.url, phase: int = phase) -> list:
                rng = random.Random(1000 * phase + n)
                with httpx.Client(base_url=url, timeout=60) as client:
                    return [_write(rng, client, f"c{n}p{phase}") for _ in range(WRITES_PER_CLIENT)]

            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                for results in pool.map(client_run, range(CLIENTS)):
                    for outcome, doc_id, payload in results:
                        if outcome == "ok":
                            acknowledged[doc_id] = payload
                        else:
                            refused.update({doc_id, doc_id + "-2"})
            assert httpx.get(server.url + "/ready").status_code == 200
            stop(server)
    assert acknowledged and refused and len(acknowledged) < 100
    with start(runtime_artifact, index_path, key_file, writable=False) as server:
        held = served_ids(server)
        stop(server)
    assert held == acknowledged  # every acknowledged write, with its payload
    assert not refused & set(held)  # and no trace of a refused one
    on_disk = Index.load(index_path)
    assert set(on_disk.ids) == set(acknowledged)


def test_a_failing_save_keeps_the_documents_reports_and_retries(runtime_artifact, tmp_path):
    """The folder of the index disappears (a file stands in its place): saves fail. Nothing
    acknowledged is dropped, /ready and the metrics say so, writes are refused (503) until a
    retry succeeds, then everything is saved."""
    import time

    from serve_fixtures import ThreadServer

    from lame_runtime import Embedder
    from lame_runtime.serve.app import create_app
    from lame_runtime.serve.config import ServeConfig
    from lame_runtime.serve.documents import Documents

    folder = tmp_path / "served"
    folder.mkdir()
    embedder = Embedder(runtime_artifact)
    documents = Documents.open_index(folder / "index", embedder.dim, writable=True, save_interval_s=0.2)
    config = ServeConfig(api_keys=(KEY,), writable=True, save_interval_s=0.2)
    doc = {"documents": [{"id": "kept", "text": "acknowledged before the disk failed"}]}

    def wait_for(check, what: str) -> None:
        deadline = time.monotonic() + 30
        while not check():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    with (
        ThreadServer(create_app(embedder, config, documents)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        folder.rename(tmp_path / "away")
        folder.write_text("not a folder")
        assert client.post("/v1/documents", json=doc, headers=AUTH).status_code == 200
        wait_for(lambda: client.get("/ready").status_code == 503, "/ready never reported the failure")
        ready = client.get("/ready").json()["error"]
        assert ready["code"] == "index_save_failing" and str(tmp_path) not in ready["message"]
        metrics = client.get("/metrics").text
        assert "lame_index_save_failing 1.0" in metrics and "lame_index_unsaved_writes 1.0" in metrics
        refused = client.post(
            "/v1/documents", json={"documents": [{"id": "later", "text": "x"}]}, headers=AUTH
        )
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "index_save_failing"
        hits = client.post("/v1/search", json={"query": "x"}).json()["data"]
        assert [hit["id"] for hit in hits] == ["kept"]  # reads still served, nothing dropped
        folder.unlink()
        (tmp_path / "away").rename(folder)
        wait_for(lambda: client.get("/ready").status_code == 200, "the retried save never succeeded")
        assert "lame_index_save_failing 0.0" in client.get("/metrics").text
        assert (
            client.post(
                "/v1/documents", json={"documents": [{"id": "later", "text": "x"}]}, headers=AUTH
            ).status_code
            == 200
        )
    assert set(Index.load(folder / "index").ids) == {"kept", "later"}
