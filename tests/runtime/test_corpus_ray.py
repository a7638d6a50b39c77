"""embed-corpus on a real local Ray cluster: parity with `lame-search index`, Parquet shards,
Qdrant (local mode), bad items, and a SIGKILLed driver resumed without recomputation.

Every test here shares the session's one Ray cluster (tests/ray_fixtures.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from ray_fixtures import ray_cluster  # noqa: E402

from lame_runtime import Index  # noqa: E402
from lame_runtime.cli.search import dataset_items, main  # noqa: E402
from lame_runtime.corpus.ray_job import CorpusOptions, embed_corpus  # noqa: E402
from lame_runtime.corpus.shards import ERRORS, MANIFEST, shard_file  # noqa: E402
from lame_runtime.persist import sha256  # noqa: E402

pytestmark = pytest.mark.ray
FOLDERS, PER_FOLDER = 2, 150  # 300 distinct digits images in two folders


@pytest.fixture(scope="module")
def image_corpus(digits_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus") / "images"
    sources = sorted((digits_dir / "images").glob("*.png"))
    for n in range(FOLDERS):
        (folder / f"set{n}").mkdir(parents=True)
        for src in sources[n * PER_FOLDER : (n + 1) * PER_FOLDER]:
            shutil.copy(src, folder / f"set{n}" / src.name)
    return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def reference(artifact_dir, image_corpus, tmp_path_factory) -> Index:
    """The single-process build: `lame-search index --images`."""
    out = tmp_path_factory.mktemp("ref") / "images"
    assert (
        main(
            [
                "index",
                "--model",
                str(artifact_dir),
                "--images",
                str(image_corpus),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    return Index.load(out)


def shard_vectors(out: Path) -> tuple[list[str], np.ndarray, object]:
    table = pq.read_table(out)  # the folder: pyarrow skips the _ and . files
    vector = table.column("vector").combine_chunks()
    matrix = vector.flatten().to_numpy().reshape(len(table), vector.type.list_size)
    return table.column("id").to_pylist(), matrix, table


def reference_vectors(reference: Index, ids: list[str]) -> np.ndarray:
    rows = dict(zip(reference.ids, reference.vectors()))
    return np.stack([rows[i] for i in ids])


def assert_same_vectors(ids, vectors, reference: Index, subset: bool = False) -> None:
    assert len(ids) == len(set(ids)), "an id appears twice"
    if subset:
        assert set(ids) <= set(reference.ids)
    else:
        assert sorted(ids) == sorted(reference.ids)
    expected = reference_vectors(reference, ids)
    cosine = (
        np.sum(vectors * expected, axis=1)
        / np.linalg.norm(vectors, axis=1)
        / np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.99999, cosine.min()


def test_ray_vectors_equal_single_process_and_qdrant_answers_like_the_exact_index(
    ray_cluster, artifact_dir, image_corpus, reference, tmp_path, capsys
):
    from lame_runtime import Embedder
    from lame_runtime.retrieval.qdrant_store import QdrantStore

    out, qdrant = tmp_path / "shards", tmp_path / "qdrant"
    options = CorpusOptions(
        concurrency=2, shard_size=64, batch_size=16, qdrant=str(qdrant), collection="digits"
    )
    summary = embed_corpus(artifact_dir, image_corpus, out, options, log=lambda line: None)
    total = len(reference)
    assert total >= 200
    assert (summary["total"], summary["embedded"], summary["skipped"], summary["failed"]) == (
        total,
        total,
        0,
        0,
    )
    assert summary["shards"] == -(-total // 64) and summary["items_per_s"] > 0

    ids, vectors, table = shard_vectors(out)
    assert str(table.schema.field("vector").type) == f"fixed_size_list<element: float>[{reference.dim}]"
    assert set(table.column("model").to_pylist()) == {sha256(artifact_dir / "lame_artifact.json")}
    assert set(table.column("dimensions").to_pylist()) == {reference.dim}
    assert table.column("path").to_pylist()[0] == str((image_corpus / ids[0]).resolve())
    assert_same_vectors(ids, vectors, reference)

    embedder = Embedder(artifact_dir)
    queries = np.concatenate(
        [
            embedder.encode_queries(
                texts=["the digits add up to 9", "7 3 1", "exactly 2 digits are greater than 6"]
            ),
            embedder.encode_documents(images=[str(image_corpus / i) for i in ids[:3]]),
        ]
    )
    with QdrantStore(str(qdrant), "digits") as store:
        assert len(store) == total
        _, found = store.search(queries, k=5, exact=True)
    _, expected = reference.search(queries, k=5)
    assert found == [list(row) for row in expected]

    # the exact index built from the shards answers like the single-process one
    code, printed, err = run_cli(capsys, "index-shards", "--shards", out, "--out", tmp_path / "from_shards")
    assert code == 0, err
    assert json.loads(printed)["count"] == total
    rebuilt = Index.load(tmp_path / "from_shards")
    assert rebuilt.search(queries, k=5)[1] == reference.search(queries, k=5)[1]
    assert rebuilt.payload(ids[0]) == {"path": str((image_corpus / ids[0]).resolve())}


def _jsonl_rows(digits_dir: Path) -> list[dict]:
    """The dataset's texts and 120 of its images, as `lame-search index --data` names them."""
    items = dataset_items(digits_dir)
    texts = [i for i in items if i[2]]
    images = [i for i in items if not i[2]][:120]
    return [
        {"id": item_id, "text": text, "image": image and str(Path(image).resolve()), "group": n % 3}
        for n, (item_id, _, text, image) in enumerate(texts + images)
    ]


def test_texts_and_pairs_match_and_bad_items_go_to_the_errors_file(
    ray_cluster, artifact_dir, digits_dir, tmp_path, capsys
):
    ref = tmp_path / "ref"
    assert (
        main(
            [
                "index",
                "--model",
                str(artifact_dir),
                "--data",
                str(digits_dir),
                "--out",
                str(ref),
                "--no-progress",
            ]
        )
        == 0
    )
    reference = Index.load(ref)
    rows = _jsonl_rows(digits_dir)
    assert {bool(r["text"]) for r in rows} == {True, False}
    pairs = [
        {"id": f"pair{n}", "text": f"the digits add up to {n}", "image": rows[-1 - n]["image"], "group": 9}
        for n in range(4)
    ]
    rows += pairs
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    lines = [json.dumps(r) for r in rows]
    bad = {
        3: json.dumps({"id": "gone", "image": str(tmp_path / "missing.png")}),
        7: json.dumps({"id": "corrupt", "image": str(corrupt)}),
        9: json.dumps({"id": "number", "text": 42}),
        11: "{not json",
        13: json.dumps({"text": "no id"}),
    }
    for at in sorted(bad):
        lines.insert(at, bad[at])
    source = tmp_path / "corpus.jsonl"
    source.write_text("\n".join(lines) + "\n\n")

    code, printed, err = run_cli(
        capsys,
        "embed-corpus",
        "--model",
        artifact_dir,
        "--source",
        source,
        "--out",
        tmp_path / "out",
        "--shard-size",
        "40",
    )
    assert code == 0, err
    summary = json.loads(printed.splitlines()[-1])
    assert (summary["embedded"], summary["failed"], summary["total"]) == (len(rows), len(bad), len(lines))
    errors = [json.loads(line) for line in (tmp_path / "out" / ERRORS).read_text().splitlines()]
    assert sorted(e["position"] for e in errors) == sorted(bad)
    reasons = {e["id"]: e["error"] for e in errors}
    assert "not found" in reasons["gone"] and "cannot read image" in reasons["corrupt"]
    assert "text must be a string" in reasons["number"]
    no_id = sorted(e["error"] for e in errors if e["id"] is None)
    assert len(no_id) == 2 and "not a JSON object" in no_id[0] and "id must be a non-empty string" in no_id[1]

    ids, vectors, table = shard_vectors(tmp_path / "out")
    assert sorted(ids) == sorted(r["id"] for r in rows)
    single = [n for n, i in enumerate(ids) if not i.startswith("pair")]
    assert_same_vectors([ids[n] for n in single], vectors[single], reference, subset=True)
    from lame_runtime import Embedder  # text+image rows: lame-search index has none, Embedder does

    expected = Embedder(artifact_dir).encode_documents(
        [p["text"] for p in pairs], [p["image"] for p in pairs]
    )
    got = np.stack([vectors[ids.index(p["id"])] for p in pairs])
    assert np.min(np.sum(got * expected, axis=1)) >= 0.99999
    assert sorted(table.column("group").to_pylist()) == sorted(r["group"] for r in rows)  # metadata kept


def test_parquet_source_with_image_bytes(ray_cluster, artifact_dir, image_corpus, reference, tmp_path):
    import pyarrow as pa

    names = sorted(p.relative_to(image_corpus).as_posix() for p in image_corpus.rglob("*.png"))[:50]
    data = [(image_corpus / n).read_bytes() for n in names]
    table = pa.table(
        {
            "id": names + ["broken"],
            "image": data + [b"not an image"],
            "label": pa.array(list(range(len(names))) + [-1], type=pa.int16()),
        }
    )
    pq.write_table(table, tmp_path / "corpus.parquet", row_group_size=16)
    summary = embed_corpus(
        artifact_dir,
        tmp_path / "corpus.parquet",
        tmp_path / "out",
        CorpusOptions(shard_size=20),
        log=lambda line: None,
    )
    assert (summary["embedded"], summary["failed"]) == (len(names), 1)
    ids, vectors, written = shard_vectors(tmp_path / "out")
    assert ids == names  # Parquet order, shards in order
    assert written.schema.field("label").type == pa.int16()
    assert written.column("label").to_pylist() == list(range(len(names)))
    expected = reference_vectors(reference, ids)
    assert np.min(np.sum(vectors * expected, axis=1)) >= 0.99999


def test_killed_driver_resumes_without_recomputing_finished_shards(
    ray_cluster, artifact_dir, image_corpus, reference, tmp_path
):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "lame_runtime.cli.search", "embed-corpus", "--model", str(artifact_dir),
        "--source", str(image_corpus), "--out", str(out), "--shard-size", "12", "--batch-size", "4",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = -(-len(reference) // 12)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if len(list(out.glob("shard-*.parquet"))) >= 3:
            break
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    _, stderr = driver.communicate(timeout=60)
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.parquet")}
    assert driver.returncode == -signal.SIGKILL, stderr[-2000:]
    assert 3 <= len(finished) < shards, "the kill did not land half-way"

    summary = embed_corpus(
        artifact_dir, image_corpus, out, CorpusOptions(shard_size=12, batch_size=4), log=lambda line: None
    )
    done_before = sum(pq.read_metadata(p).num_rows for p in finished)
    # the model ran on exactly the items of the shards the killed driver had not written
    assert summary["skipped"] == done_before and summary["embedded"] == len(reference) - done_before
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished  # not rewritten
    assert sorted(out.glob("shard-*.parquet")) == [shard_file(out, n) for n in range(shards)]
    ids, vectors, _ = shard_vectors(out)
    assert_same_vectors(ids, vectors, reference)  # every id once, the same vectors

    again = embed_corpus(
        artifact_dir, image_corpus, out, CorpusOptions(shard_size=12, batch_size=4), log=lambda line: None
    )
    assert (again["embedded"], again["skipped"]) == (0, len(reference))

    # Qdrant asked for only now: the finished shards are upserted from their files, no model
    # call. Then as if killed after the upserts but before their markers: upserted again, the
    # same points are overwritten, none added.
    qdrant = CorpusOptions(shard_size=12, batch_size=4, qdrant=str(tmp_path / "q"), collection="c")
    for _ in range(2):
        loaded = embed_corpus(artifact_dir, image_corpus, out, qdrant, log=lambda line: None)
        assert loaded["embedded"] == 0 and loaded["qdrant"]["count"] == len(reference)
        shutil.rmtree(out / ".qdrant")


def _my_actor_pids() -> list[int]:
    """Pids of the CorpusEmbedder actors of this session's cluster: Ray workers descend from
    the raylet this pytest process started, so nobody else's process can match."""

    def ancestors(pid: int):
        while pid > 1:
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                return
            yield pid

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"CorpusEmbedder" in command and os.getpid() in ancestors(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_killed_worker_is_retried_and_no_row_doubles(
    ray_cluster, artifact_dir, image_corpus, reference, tmp_path
):
    import threading

    out, result = tmp_path / "out", {}
    options = CorpusOptions(shard_size=12, batch_size=4)
    job = threading.Thread(
        target=lambda: result.update(
            embed_corpus(artifact_dir, image_corpus, out, options, log=lambda line: None)
        )
    )
    job.start()
    killed = None
    deadline = time.monotonic() + 120
    while job.is_alive() and killed is None and time.monotonic() < deadline:
        if len(list(out.glob("shard-*.parquet"))) >= 3:
            for pid in _my_actor_pids():
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.01)
    job.join(timeout=300)
    assert killed is not None, "no actor was killed half-way"
    assert result["embedded"] == len(reference) and result["failed"] == 0
    ids, vectors, _ = shard_vectors(out)
    assert_same_vectors(ids, vectors, reference)
