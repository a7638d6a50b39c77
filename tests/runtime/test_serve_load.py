"""lame-serve under load and when stopped: a real server process, concurrent clients mixing
embeddings, search and adds (bounded by count and time), RSS over the run; SIGTERM drains
and saves; SIGKILL at any instant leaves the last saved index loadable."""

from __future__ import annotations

import concurrent.futures
import random
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")

from runtime_fixtures import runtime_artifact  # noqa: E402,F401  (a fixture)
from serve_fixtures import KEY, ServerProcess, data_uri, png_bytes, write_key_file  # noqa: E402

from lame_runtime import Embedder, Index  # noqa: E402
from lame_runtime.retrieval.index_io import index_exists  # noqa: E402

pytestmark = pytest.mark.runtime
SAME = 0.99999
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENTS = 8
OPS_PER_CLIENT = 90  # count bound
TIME_LIMIT_S = 60  # time bound (the run takes a few seconds on 2 cores)
WARMUP_FRACTION = 0.3  # RSS is compared from here on
RSS_EVERY = 20  # one RSS sample per this many completed requests after warm-up
RSS_TOLERANCE = 0.05
ENV = {"OMP_NUM_THREADS": "1"}  # the server shares 2 cores with its clients


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


class Tally:
    """What the clients saw; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.overloaded = 0
        self.acked: list[tuple[str, str]] = []  # (id, text) of adds answered 200

    def error(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)


def call(
    client: httpx.Client, tally: Tally, method: str, path: str, body: dict, headers: dict | None = None
) -> dict | None:
    """One request; a 503 (the bounded queue, deliberate) is retried after a short pause."""
    for _ in range(50):
        answer = client.request(method, path, json=body, headers=headers)
        if answer.status_code == 503:
            with tally.lock:
                tally.overloaded += 1
            time.sleep(0.02)
            continue
        if answer.status_code != 200:
            tally.error(f"{path}: {answer.status_code} {answer.text[:200]}")
            return None
        return answer.json()
    tally.error(f"{path}: still 503 after 50 tries")
    return None


def test_load_mixed_clients_rss_flat_then_sigterm_saves(runtime_artifact, tmp_path):
    embedder = Embedder(runtime_artifact)
    texts = [f"digit {i} written by hand" for i in range(12)]
    pngs = [png_bytes(i) for i in range(4)]
    for i, raw in enumerate(pngs):
        (tmp_path / f"img{i}.png").write_bytes(raw)
    want_text = embedder.encode_queries(texts)
    want_image = embedder.encode_queries(images=[tmp_path / f"img{i}.png" for i in range(4)])
    base = [f"base {t}" for t in texts]
    index_path = tmp_path / "index"
    reference = Index(embedder.dim)
    reference.add(embedder.encode_documents(base), [f"base/{i}" for i in range(len(base))])
    reference.save(index_path)
    expected_hits = {t: reference.search(embedder.encode_queries([t]), k=3)[1][0] for t in texts}

    server = ServerProcess(
        "--model",
        str(runtime_artifact),
        "--model-name",
        "m",
        "--index",
        str(index_path),
        "--writable",
        "--api-key-file",
        str(write_key_file(tmp_path)),
        "--save-interval",
        "0.5",
        "--max-queue",
        "64",
        env=ENV,
    )
    tally, rss = Tally(), []
    total = CLIENTS * OPS_PER_CLIENT
    done = [0]
    deadline = time.monotonic() + TIME_LIMIT_S

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for op in range(OPS_PER_CLIENT):
                if time.monotonic() > deadline:
                    return
                kind = rng.choice(["text", "text", "image", "search", "add"])
                i = rng.randrange(len(texts))
                if kind == "text":
                    got = call(client, tally, "POST", "/v1/embeddings", {"model": "m", "input": texts[i]})
                    if got and cosine(got["data"][0]["embedding"], want_text[i]) < SAME:
                        tally.error(f"text {i}: vector differs from the single-threaded one")
                elif kind == "image":
                    j = i % len(pngs)
                    got = call(
                        client,
                        tally,
                        "POST",
                        "/v1/embeddings",
                        {"model": "m", "input": [{"image": data_uri(pngs[j])}]},
                    )
                    if got and cosine(got["data"][0]["embedding"], want_image[j]) < SAME:
                        tally.error(f"image {j}: vector differs from the single-threaded one")
                elif kind == "search":
                    got = call(
                        client, tally, "POST", "/v1/search", {"query": texts[i], "k": 3, "prefix": "base/"}
                    )
                    if got and [h["id"] for h in got["data"]] != expected_hits[texts[i]]:
                        tally.error(f"search {i}: {got['data']} != {expected_hits[texts[i]]}")
                else:
                    item_id, text = f"new/{seed}/{op}", f"added {seed} {op}"
                    got = call(
                        client,
                        tally,
                        "POST",
                        "/v1/documents",
                        {"documents": [{"id": item_id, "text": text}]},
                        AUTH,
                    )
                    if got:
                        with tally.lock:
                            tally.acked.append((item_id, text))
                with tally.lock:
                    done[0] += 1
                    # sampled by request count, not by the clock, so a fast machine takes as
                    # many samples as a slow one
                    if done[0] >= WARMUP_FRACTION * total and done[0] % RSS_EVERY == 0:
                        rss.append(server.rss_bytes())

    with server:
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client_loop, seed) for seed in range(CLIENTS)]
            for future in futures:
                future.result()
        server.signal(signal.SIGTERM)
        code, stderr = server.wait()

    print(
        f"\n[load] {done[0]} requests, {tally.overloaded} x 503, {len(tally.acked)} adds, RSS {rss[0] / 2**20:.1f}-{max(rss) / 2**20:.1f} MiB over {len(rss)} samples"
    )
    assert not tally.errors, tally.errors[:5]
    assert done[0] == total, f"only {done[0]} of {total} requests within {TIME_LIMIT_S} s"
    assert code == 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert len(rss) >= 10, f"only {len(rss)} RSS samples"
    assert max(rss) <= rss[0] * (1 + RSS_TOLERANCE), (
        f"RSS grew from {rss[0] / 2**20:.1f} MiB to {max(rss) / 2**20:.1f} MiB under load"
    )
    # SIGTERM saved every acknowledged add, with the vectors the Embedder gives
    saved = Index.load(index_path)
    ids = set(saved.ids)
    assert {item_id for item_id, _ in tally.acked} <= ids
    assert len(saved) == len(base) + len(tally.acked)
    sample = tally.acked[:20]
    rows = [saved.ids.index(item_id) for item_id, _ in sample]
    assert cosine(saved.vectors()[rows], embedder.encode_documents([t for _, t in sample])).min() >= SAME


def _adder(url: str, stop: threading.Event, sent: list, acked: list, seed: int) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        n = 0
        while not stop.is_set():
            docs = [{"id": f"k/{seed}/{n}/{j}", "text": f"kill {seed} {n} {j}"} for j in range(4)]
            sent.extend(d["id"] for d in docs)
            try:
                answer = client.post("/v1/documents", json={"documents": docs}, headers=AUTH)
            except httpx.HTTPError:
                return  # the server is gone or going: expected
            if answer.status_code == 200:
                acked.extend(d["id"] for d in docs)
            n += 1


@pytest.mark.parametrize(
    "sig,delay",
    [(signal.SIGKILL, 0.1), (signal.SIGKILL, 0.6), (signal.SIGTERM, 0.3)],
    ids=["SIGKILL-0.1s", "SIGKILL-0.6s", "SIGTERM-0.3s"],
)
def test_signal_with_adds_in_flight(runtime_artifact, tmp_path, sig, delay):
    """SIGKILL at some instant: the last complete save loads. SIGTERM: the requests in flight
    finish, every acknowledged add is saved, exit code 0."""
    index_path = tmp_path / "index"
    server = ServerProcess(
        "--model",
        str(runtime_artifact),
        "--index",
        str(index_path),
        "--writable",
        "--api-key-file",
        str(write_key_file(tmp_path)),
        "--save-interval",
        "0.1",
        env=ENV,
    )
    stop, sent, acked = threading.Event(), [], []
    with server:
        threads = [threading.Thread(target=_adder, args=(server.url, stop, sent, acked, s)) for s in range(3)]
        for thread in threads:
            thread.start()
        # the delay counts from the first acknowledged add and the first save, so a slow
        # machine signals as far into the adds as a fast one
        deadline = time.monotonic() + TIME_LIMIT_S
        while not (acked and index_exists(index_path)) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        server.signal(sig)
        code, stderr = server.wait()
        stop.set()
        for thread in threads:
            thread.join()
    assert acked, "no add was acknowledged before the signal"
    saved = Index.load(index_path)  # whatever instant the signal hit
    ids = set(saved.ids)
    assert len(saved) > 0 and len(ids) == len(saved)
    assert ids <= set(sent)
    assert np.allclose(np.linalg.norm(saved.vectors(), axis=1), 1, atol=1e-5)
    # each request's rows are added together: a save never holds half a request
    assert len(saved) == 4 * len({i.rsplit("/", 1)[0] for i in ids})
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 0, stderr[-2000:]
        assert "Traceback" not in stderr, stderr[-2000:]
        assert set(acked) <= ids, f"{len(set(acked) - ids)} acknowledged adds were not saved"


def test_a_failed_final_save_is_not_a_clean_exit(runtime_artifact, tmp_path):
    """SIGTERM when the index cannot be written any more (its folder replaced by a file):
    the adds since the last save are lost, so the exit code says so, in one line."""
    import shutil

    folder = tmp_path / "served"
    server = ServerProcess(
        "--model",
        str(runtime_artifact),
        "--index",
        str(folder / "index"),
        "--writable",
        "--api-key-file",
        str(write_key_file(tmp_path)),
        "--save-interval",
        "0",
        env=ENV,
    )
    with server:
        added = httpx.post(
            server.url + "/v1/documents", headers=AUTH, json={"documents": [{"id": "a", "text": "x"}]}
        )
        assert added.status_code == 200
        shutil.rmtree(folder)
        folder.write_text("not a folder any more")
        server.signal(signal.SIGTERM)
        code, stderr = server.wait()
    assert code == 2, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lame-serve: error: "), stderr[-2000:]
