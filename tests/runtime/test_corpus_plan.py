"""lame_runtime.corpus without a cluster: source plans and shard reads, the CorpusEmbedder
callable called directly (as each Ray actor calls it), the output folder's rules, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from runtime_fixtures import runtime_artifact  # noqa: E402

from lame_runtime.cli.search import main  # noqa: E402
from lame_runtime.corpus.shards import MANIFEST, Output, shard_file  # noqa: E402
from lame_runtime.corpus.sources import plan_source, read_shard  # noqa: E402
from lame_runtime.corpus.udf import CorpusEmbedder  # noqa: E402
from lame_runtime.errors import InputError, MissingFileError  # noqa: E402
from lame_runtime.retrieval.indexing import image_items  # noqa: E402


@pytest.fixture(scope="module")
def images(digits_dir) -> list[str]:
    return sorted(str(p) for p in (digits_dir / "images").glob("*.png"))[:12]


def test_jsonl_plan_skips_blank_lines_and_reads_each_shard_in_order(tmp_path, images):
    lines = [json.dumps({"id": f"t{n}", "text": f"text {n}", "tag": n}) for n in range(7)]
    lines.insert(3, "")
    lines.append(json.dumps({"id": "img", "image": Path(images[0]).name}))  # relative to the file
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n\n")
    plan = plan_source(tmp_path / "c.jsonl", shard_size=3)
    assert (plan.kind, plan.total, [s.rows for s in plan.shards]) == ("jsonl", 8, [3, 3, 2])
    rows = [row for shard in plan.shards for row in read_shard(shard.spec)]
    assert [r["position"] for r in rows] == list(range(8))
    assert [r["id"] for r in rows] == [f"t{n}" for n in range(7)] + ["img"]
    assert rows[4]["metadata"] == {"tag": 4} and rows[-1]["image"] == str(tmp_path / Path(images[0]).name)
    (tmp_path / "c.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert plan_source(tmp_path / "c.jsonl", 3).fingerprint != plan.fingerprint


def test_jsonl_rows_that_cannot_be_stored_are_item_errors(tmp_path):
    # JSON's \ud800 escape decodes to a lone surrogate, which no Parquet shard or Qdrant point
    # can hold: the row fails alone, by name, before the shard is embedded or written.
    lines = [
        '{"id": "bad\\ud800", "text": "t"}',
        '{"id": "b", "text": "x\\udc00"}',
        '{"id": "c", "text": "ok"}',
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    rows = [row for shard in plan_source(tmp_path / "c.jsonl", 10).shards for row in read_shard(shard.spec)]
    assert "not valid Unicode" in rows[0]["error"] and "U+D800" in rows[0]["error"]
    assert "text is not valid Unicode" in rows[1]["error"] and rows[2]["error"] is None


def test_parquet_shards_cross_row_groups_exactly(tmp_path):
    table = pa.table({"id": [f"r{n}" for n in range(50)], "text": [f"t{n}" for n in range(50)]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=7)
    pq.write_table(table.slice(0, 5), tmp_path / "b.parquet")
    plan = plan_source(tmp_path, shard_size=12)
    assert [s.rows for s in plan.shards] == [12, 12, 12, 12, 2, 5]  # a shard never spans files
    ids = [row["id"] for shard in plan.shards for row in read_shard(shard.spec)]
    assert ids == table.column("id").to_pylist() + table.column("id").to_pylist()[:5]


def test_image_folder_ids_are_lame_search_index_ids(digits_dir):
    plan = plan_source(digits_dir / "images", shard_size=500, pattern="train_*")
    ids = [row["id"] for shard in plan.shards for row in read_shard(shard.spec)]
    assert ids == [item[0] for item in image_items(digits_dir / "images", "train_*")]


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda d: d / "nothing.jsonl", MissingFileError, "not found"),
        (lambda d: (d / "e.jsonl").write_text("\n\n") and d / "e.jsonl", InputError, "no lines"),
        (lambda d: (d / "x.csv").write_text("id\n") and d / "x.csv", InputError, "neither a folder"),
    ],
)
def test_bad_sources_are_named(tmp_path, make, error, words):
    with pytest.raises(error, match=words):
        plan_source(make(tmp_path), shard_size=10)


def test_parquet_without_an_id_column_is_refused(tmp_path):
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "t.parquet")
    with pytest.raises(InputError, match="'id' column"):
        plan_source(tmp_path / "t.parquet", 10)


def _batch(texts, images) -> dict[str, np.ndarray]:
    return {
        "id": np.array([f"r{n}" for n in range(len(texts))], dtype=object),
        "text": np.array(texts, dtype=object),
        "image": np.array(images, dtype=object),
    }


def test_corpus_embedder_is_the_embedder_documents_and_queries(runtime_artifact, images):
    from lame_runtime import Embedder

    embedder = Embedder(runtime_artifact)
    texts = ["the digits add up to 9", None, "7 3 1", None]
    pics = [None, images[0], images[1], Path(images[2]).read_bytes()]
    out = CorpusEmbedder(str(runtime_artifact), batch_size=3)(_batch(texts, pics))
    assert list(out["error"]) == [None] * 4 and list(out["id"]) == ["r0", "r1", "r2", "r3"]
    expected = embedder.encode_documents(texts, [images[2] if isinstance(p, bytes) else p for p in pics])
    assert np.min(np.sum(out["vector"] * expected, axis=1)) >= 0.99999

    queries = CorpusEmbedder(str(runtime_artifact), role="query")(_batch(texts[:2], pics[:2]))
    expected = embedder.encode_queries(texts[:2], pics[:2])
    assert np.min(np.sum(queries["vector"] * expected, axis=1)) >= 0.99999


def test_corpus_embedder_fails_bad_rows_alone(runtime_artifact, images, tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    batch = _batch(["ok", 5, None, None, None], [None, None, str(tmp_path / "bad.png"), b"\x00garbage", None])
    out = CorpusEmbedder(str(runtime_artifact))(batch)
    errors = list(out["error"])
    assert errors[0] is None and np.isfinite(out["vector"][0]).all()
    assert "text must be a string" in errors[1] and "cannot read image" in errors[2]
    assert "cannot read image bytes" in errors[3] and "neither text nor image" in errors[4]
    assert np.isnan(out["vector"][1:]).all()


def test_corpus_embedder_refuses_an_untrained_size(runtime_artifact):
    with pytest.raises(InputError, match="dimensions=5"):
        CorpusEmbedder(str(runtime_artifact), dimensions=5)


def test_output_resumes_only_the_same_job_and_never_clears_foreign_folders(tmp_path):
    out = Output(tmp_path / "out")
    job = {"model": "abc", "shard_size": 10, "shards": 3}
    out.prepare(job)
    out.write_shard(1, pa.table({"id": ["a"]}), [{"id": "b", "error": "bad"}])
    out.prepare(job)  # the same job: resumes
    assert out.finished(3) == {1}
    with pytest.raises(InputError, match="its shard_size was 10, this run's is 20"):
        out.prepare({**job, "shard_size": 20})
    out.prepare({**job, "shard_size": 20}, force=True)
    assert out.finished(3) == set() and not shard_file(out.path, 1).exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not empty"):
        Output(tmp_path / "mine").prepare(job, force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cli_errors_are_one_line_before_any_cluster(runtime_artifact, tmp_path, capsys):
    code = main(
        [
            "embed-corpus",
            "--model",
            str(runtime_artifact),
            "--source",
            str(tmp_path / "no"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and err.startswith("lame-search: error: corpus source not found") and err.count("\n") == 1
    )
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / MANIFEST).write_text(json.dumps({"shards": 2}))
    code = main(["index-shards", "--shards", str(tmp_path / "o"), "--out", str(tmp_path / "idx")])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 2 shards are not written yet" in err


def test_without_the_ray_extra_the_cli_says_what_to_install(runtime_artifact, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from lame_runtime.cli.search import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
    argv = [
        "embed-corpus",
        "--model",
        str(runtime_artifact),
        "--source",
        str(tmp_path / "c.jsonl"),
        "--out",
        str(tmp_path / "o"),
    ]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "pip install 'lame-embed[ray]'" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "o").exists()
