"""lame-search on a native-resolution artifact: a dataset whose candidates include a video (a
folder of frames) and a list of images is indexed with the Embedder's own vectors, and a text
query ranks the items as the Embedder's vectors do. The model has random weights, so "finding"
the video means exactly that: the CLI's ranking is the Embedder's cosine ranking, with the
video item among the results; which item wins says nothing about quality. A fixed-size
artifact refuses such a dataset, and embed-corpus refuses a video item instead of embedding it
without its video."""

from __future__ import annotations

import json

import numpy as np
import pytest
from native_fixtures import native_artifact, write_pictures  # noqa: F401  (a fixture)
from runtime_fixtures import runtime_artifact  # noqa: F401  (a fixture)

from lame_runtime import Embedder, Index
from lame_runtime.cli.search import main
from lame_runtime.corpus.sources import plan_source, read_shard

# Not marked `runtime`: the native artifact these tests serve is built with torch (digits_dir).
CLIP_TEXT = "a short clip of static"
CANDIDATES = [
    {"text": "a photo of noise", "image": "photo.png"},
    {"text": "two pages", "image": ["page.png", "photo.png"]},
    {"text": CLIP_TEXT, "video": "clip"},
    {"text": "just some words"},
    {"video": "clip"},
]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def dataset(folder, candidates=CANDIDATES):
    paths = write_pictures(folder)
    (folder / "eval.jsonl").write_text(json.dumps({"query": {"text": "q"}, "candidates": candidates}) + "\n")
    return paths


def test_a_native_index_holds_a_video_and_a_text_query_ranks_it_as_the_embedder(
    native_artifact, tmp_path, capsys
):
    paths = dataset(tmp_path / "data")
    out = tmp_path / "index"
    code, _, err = run_cli(
        capsys, "index", "--model", native_artifact, "--data", tmp_path / "data", "--out", out,
        "--no-progress", "--batch-size", "2",
    )  # fmt: skip
    assert code == 0, err
    index = Index.load(out)
    assert index.ids == [
        "photo.png :: a photo of noise",
        "page.png :: photo.png :: two pages",
        f"clip :: {CLIP_TEXT}",
        "just some words",
        "clip",
    ]
    assert index.payload(f"clip :: {CLIP_TEXT}") == {"video": str(paths["clip"].resolve()), "text": CLIP_TEXT}
    embedder = Embedder(native_artifact)
    documents = embedder.encode_documents(
        [c.get("text") for c in CANDIDATES],
        [paths["photo"], [paths["page"], paths["photo"]], None, None, None],
        videos=[None, None, paths["clip"], None, paths["clip"]],
    )
    assert (index.vectors() * documents).sum(1).min() >= 0.99999  # each item, video included

    code, stdout, err = run_cli(
        capsys, "query", "--model", native_artifact, "--index", out, "--json", CLIP_TEXT,
        "--instruction", "", "-k", "5",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads(stdout)["results"]
    query = embedder.encode_queries([CLIP_TEXT], instruction="")[0]
    scores = documents @ query
    assert [r["id"] for r in results] == [index.ids[i] for i in np.argsort(-scores, kind="stable")]
    found = {r["id"]: r["score"] for r in results}
    assert abs(found[f"clip :: {CLIP_TEXT}"] - scores[2]) < 1e-5


def test_a_bad_video_is_skipped_or_named(native_artifact, tmp_path, capsys):
    (tmp_path / "data" / "still").mkdir(parents=True)  # a folder without frame files
    dataset(tmp_path / "data", [{"text": "fine"}, {"text": "no frames", "video": "still"}])
    argv = ["index", "--model", native_artifact, "--data", tmp_path / "data", "--no-progress"]
    code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "strict")
    assert code != 0 and "videos[1]" in err and "no frame files" in err and "--skip-bad" in err
    code, stdout, err = run_cli(capsys, *argv, "--out", tmp_path / "skipping", "--skip-bad")
    assert code == 0, err
    assert json.loads(stdout)["skipped"] == 1 and Index.load(tmp_path / "skipping").ids == ["fine"]
    code, _, err = run_cli(
        capsys, *argv[:4], tmp_path / "nowhere", "--out", tmp_path / "x"
    )  # the dataset folder itself is missing
    assert code != 0
    (tmp_path / "data" / "eval.jsonl").write_text(
        json.dumps({"candidates": [{"text": "escape", "video": "../../etc"}]}) + "\n"
    )
    code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "y")
    assert code != 0 and "eval.jsonl:1" in err and "outside" in err


def test_a_fixed_size_model_refuses_videos_and_image_lists(runtime_artifact, tmp_path, capsys):
    dataset(tmp_path / "data", [{"text": "fine"}, {"text": "two", "image": ["photo.png", "page.png"]}])
    code, _, err = run_cli(
        capsys, "index", "--model", runtime_artifact, "--data", tmp_path / "data", "--out",
        tmp_path / "index", "--no-progress",
    )  # fmt: skip
    assert code != 0 and "items[1]" in err and "2 images" in err and "native-resolution" in err
    assert not list(tmp_path.glob("index*"))  # refused before anything was written


def test_embed_corpus_refuses_a_video_item(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    lines = [{"id": "a", "text": "words"}, {"id": "b", "text": "a clip", "video": "clip"}]
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = read_shard(plan_source(corpus, 10).shards[0].spec)
    assert rows[0]["error"] is None
    assert (
        "has a video" in rows[1]["error"] and rows[1]["text"] is None and "corpus.jsonl:2" in rows[1]["error"]
    )
