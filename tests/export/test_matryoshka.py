"""Matryoshka dimensions end to end: ``lame-train --matryoshka`` -> ``lame-export`` (manifest
lists the sizes, parity gated at each) -> ``Embedder.encode(dimensions=)``, indexes that store
the chosen size (exact, FAISS, Qdrant), ``lame-search``, ``lame-serve`` and ``lame-eval``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lame_runtime import Embedder, Index
from lame_runtime.errors import InputError, InputTypeError

DIMS = [8, 16, 32]  # the tiny preset's embed_dim is 32


@pytest.fixture(scope="module")
def mrl_ckpt(digits_dir, tmp_path_factory):
    from lame.cli.train import main

    out = tmp_path_factory.mktemp("mrl") / "ckpt"
    code = main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--max-steps",
            "6",
            "--batch-size",
            "8",
            "--no-progress",
            "--no-final-eval",
            "--matryoshka",
            ",".join(map(str, DIMS)),
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def mrl_artifact(mrl_ckpt, tmp_path_factory):
    from lame_export.pipeline import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("mrl") / "artifact"
    export_checkpoint(mrl_ckpt, out, ExportOptions(fp16=True, force=True))
    return out


def test_checkpoint_and_manifest_list_the_sizes(mrl_ckpt, mrl_artifact):
    assert json.loads((mrl_ckpt / "config.json").read_text())["matryoshka_dims"] == DIMS
    manifest = json.loads((mrl_artifact / "lame_artifact.json").read_text())
    assert manifest["matryoshka_dims"] == DIMS
    parity = json.loads((mrl_artifact / "parity.json").read_text())
    for precision in ("fp32", "fp16"):
        sizes = parity[precision]["by_dimension"]
        assert set(sizes) == {str(d) for d in DIMS}
        # The gate's figure is the worst over the full vector and every prefix.
        assert parity[precision]["min_cosine"] <= min(sizes.values()) + 1e-7
        assert parity[precision]["passed"]


def test_encode_dimensions_gives_unit_prefixes(mrl_artifact):
    embedder = Embedder(mrl_artifact)
    assert embedder.dimensions == tuple(DIMS)
    texts = ["the digits are 3 and 4", "the largest digit is 9", ""]
    full = embedder.encode(texts)
    for d in DIMS[:-1]:
        cut = embedder.encode(texts, dimensions=d)
        assert cut.shape == (3, d) and cut.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
        expected = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
        np.testing.assert_allclose(cut, expected, atol=1e-5)
        assert embedder.encode_queries(texts[:1], dimensions=d).shape == (1, d)
        assert embedder.encode_documents(texts[:1], dimensions=d).shape == (1, d)
        ((ids, batch),) = list(embedder.encode_iter(texts, dimensions=d))
        np.testing.assert_allclose(batch, cut, atol=1e-6)
    assert embedder.encode([], dimensions=16).shape == (0, 16)
    assert embedder.encode(texts, dimensions=32).shape == (3, 32)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (12, InputError, "choose one of [8, 16, 32]"),
        (0, InputError, "not supported"),
        ("16", InputTypeError, "dimensions must be an integer"),
        (True, InputTypeError, "dimensions must be an integer"),
    ],
)
def test_unsupported_dimensions_are_refused(mrl_artifact, bad, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        Embedder(mrl_artifact).encode(["x"], dimensions=bad)


def test_plain_artifact_serves_only_its_full_size(artifact_dir):
    embedder = Embedder(artifact_dir)
    assert embedder.dimensions == (embedder.dim,)
    with pytest.raises(InputError, match="not trained with --matryoshka"):
        embedder.encode(["x"], dimensions=embedder.dim // 2)


def _search(capsys, *argv) -> tuple[int, str, str]:
    from lame_runtime.cli.search import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_lists_the_sizes_served(mrl_artifact, artifact_dir, capsys):
    """`lame-search info` tells a user which sizes --dimensions / dimensions= accept."""
    code, out, _ = _search(capsys, "info", mrl_artifact, "--json")
    report = json.loads(out)
    assert code == 0 and report["dimensions"] == DIMS and report["embedding_dim"] == DIMS[-1]
    code, out, _ = _search(capsys, "info", mrl_artifact)
    assert code == 0 and out.splitlines()[0].startswith("embedding sizes: 8, 16, 32 (Matryoshka")
    code, out, _ = _search(capsys, "info", artifact_dir)
    plain = Embedder(artifact_dir).dim
    assert code == 0 and out.splitlines()[0] == f"embedding sizes: {plain}"
    code, _, err = _search(capsys, "info", mrl_artifact.parent / "absent")
    assert code == 2 and "artifact directory not found" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["exact", "ann", "qdrant"])
def test_indexes_store_the_chosen_size(kind, mrl_artifact, digits_dir, tmp_path, capsys):
    if kind == "ann":
        pytest.importorskip("faiss")
    if kind == "qdrant":
        pytest.importorskip("qdrant_client")
    target = ["--qdrant", tmp_path / "q"] if kind == "qdrant" else ["--out", tmp_path / "index"]
    extra = ["--ann", "flat"] if kind == "ann" else []
    code, out, err = _search(
        capsys,
        "index",
        "--model",
        mrl_artifact,
        "--data",
        digits_dir,
        *target,
        *extra,
        "--dimensions",
        16,
        "--no-progress",
    )
    assert code == 0, err
    assert json.loads(out)["dim"] == 16
    query = "the digits are 1 and 2"
    code, out, err = _search(
        capsys,
        "query",
        query,
        "--model",
        mrl_artifact,
        *(["--qdrant", tmp_path / "q"] if kind == "qdrant" else ["--index", tmp_path / "index"]),
        "--json",
        "-k",
        3,
    )
    assert code == 0, err
    results = json.loads(out)["results"]
    assert len(results) == 3
    if kind == "exact":  # the CLI cut the query to the index's size, as the library does
        index = Index.load(tmp_path / "index")
        assert index.dim == 16
        vector = Embedder(mrl_artifact).encode_queries([query], dimensions=16)
        _, ids = index.search(vector, 3)
        assert [r["id"] for r in results] == ids[0]


def test_index_size_errors(mrl_artifact, artifact_dir, digits_dir, tmp_path, capsys):
    code, _, err = _search(
        capsys,
        "index",
        "--model",
        mrl_artifact,
        "--data",
        digits_dir,
        "--out",
        tmp_path / "i",
        "--dimensions",
        12,
        "--no-progress",
    )
    assert code != 0 and "dimensions=12 is not supported" in err and "Traceback" not in err
    assert (
        _search(
            capsys,
            "index",
            "--model",
            mrl_artifact,
            "--data",
            digits_dir,
            "--out",
            tmp_path / "i",
            "--dimensions",
            8,
            "--no-progress",
        )[0]
        == 0
    )
    # Resuming with another size would mix two embeddings in one index.
    code, _, err = _search(
        capsys,
        "index",
        "--model",
        mrl_artifact,
        "--data",
        digits_dir,
        "--out",
        tmp_path / "i",
        "--dimensions",
        16,
        "--resume",
        "--no-progress",
    )
    assert code != 0 and "dimensions was 8" in err
    # A plain model cannot query an 8-dim index.
    code, _, err = _search(capsys, "query", "x", "--model", artifact_dir, "--index", tmp_path / "i")
    assert code != 0 and "8-dim" in err


def test_serve_searches_a_smaller_index(mrl_artifact, digits_dir, tmp_path, capsys):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from lame_runtime.serve.app import create_app
    from lame_runtime.serve.config import ServeConfig
    from lame_runtime.serve.documents import Documents

    assert (
        _search(
            capsys,
            "index",
            "--model",
            mrl_artifact,
            "--data",
            digits_dir,
            "--out",
            tmp_path / "i",
            "--dimensions",
            16,
            "--no-progress",
        )[0]
        == 0
    )
    embedder = Embedder(mrl_artifact)
    documents = Documents.open_index(tmp_path / "i", embedder.dim, sizes=embedder.dimensions)
    assert documents.dim == 16
    with TestClient(
        create_app(embedder, ServeConfig(model_name="m"), documents), base_url="http://127.0.0.1"
    ) as client:
        hits = client.post("/v1/search", json={"model": "m", "query": "the digits are 1 and 2", "k": 3})
        assert hits.status_code == 200, hits.text
        index = Index.load(tmp_path / "i")
        _, ids = index.search(embedder.encode_queries(["the digits are 1 and 2"], dimensions=16), 3)
        assert [h["id"] for h in hits.json()["data"]] == ids[0]
        got = client.post("/v1/embeddings", json={"model": "m", "input": "x", "dimensions": 8})
        assert len(got.json()["data"][0]["embedding"]) == 8


def test_eval_scores_each_size_from_one_embedding(mrl_ckpt, digits_dir, tmp_path):
    from lame.cli.evaluate import main

    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "--ckpt",
                str(mrl_ckpt),
                "--data",
                str(digits_dir),
                "--dimensions",
                "8,32",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["by_dimension"]) == {"8", "32"}
    # The full size through the prefix path is the ordinary result.
    assert result["by_dimension"]["32"]["hit@1"] == result["hit@1"]
    assert result["by_dimension"]["32"]["per_group"] == result["per_group"]
    assert (
        main(["--ckpt", str(mrl_ckpt), "--data", str(digits_dir), "--dimensions", "64", "--no-progress"]) != 0
    )


def test_serve_opens_a_smaller_qdrant_collection_for_writing(mrl_artifact, digits_dir, tmp_path, capsys):
    pytest.importorskip("qdrant_client")
    from lame_runtime.errors import InputError as Refused
    from lame_runtime.serve.documents import Documents

    assert (
        _search(
            capsys,
            "index",
            "--model",
            mrl_artifact,
            "--data",
            digits_dir,
            "--qdrant",
            tmp_path / "q",
            "--dimensions",
            8,
            "--no-progress",
        )[0]
        == 0
    )
    embedder = Embedder(mrl_artifact)
    documents = Documents.open_qdrant(
        str(tmp_path / "q"), "lame", embedder.dim, writable=True, sizes=embedder.dimensions
    )
    try:
        assert documents.dim == 8
        before = len(documents)
        documents.add(
            ["extra"], embedder.encode_documents(["a text no candidate has"], dimensions=8), [{"text": "x"}]
        )
        assert len(documents) == before + 1
        document = embedder.encode_documents(["a text no candidate has"], dimensions=8)[0]
        assert documents.search(document, 1)[0]["id"] == "extra"  # finds itself first
    finally:
        documents.close()
    with pytest.raises(Refused, match="8-dim"):  # without the sizes: another model's collection
        Documents.open_qdrant(str(tmp_path / "q"), "lame", embedder.dim, writable=True)


@pytest.mark.parametrize(
    "value, message",
    [
        ("8,x", "expected comma-separated integers"),
        ("8,16", "end at embed_dim=32"),
        ("16,8,32", "must increase"),
    ],
)
def test_bad_matryoshka_flag_is_one_line(digits_dir, tmp_path, capsys, value, message):
    from lame.cli.train import main

    code = main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(tmp_path / "c"),
            "--preset",
            "tiny",
            "--max-steps",
            "1",
            "--no-progress",
            "--matryoshka",
            value,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
