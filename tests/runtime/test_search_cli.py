"""lame-search, in-process through main(argv): index images or a dataset, query by text/image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lame_runtime import Embedder, Index, RuntimeOptions
from lame_runtime.cli.search import main
from lame_runtime.errors import InputError


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def image_index(artifact_dir, digits_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("search") / "digits_images"
    code = main(
        [
            "index",
            "--model",
            str(artifact_dir),
            "--images",
            str(digits_dir / "images"),
            "--out",
            str(out),
            "--batch-size",
            "64",
        ]
    )
    assert code == 0
    return out, Index.load(out)


def query_json(capsys, artifact_dir, index_path, *argv) -> dict:
    code, out, err = run_cli(capsys, "query", "--model", artifact_dir, "--index", index_path, "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def test_index_images_dir(image_index, digits_dir, artifact_dir):
    path, index = image_index
    files = sorted(p.name for p in (digits_dir / "images").glob("*.png"))
    assert index.ids == files  # every image, sorted, id relative to the directory
    assert index.dim == Embedder(artifact_dir, options=RuntimeOptions(lazy=True)).dim
    payload = index.payload(files[5])
    assert Path(payload["path"]) == (digits_dir / "images" / files[5]).resolve()
    # The stored vectors are the documents' embeddings (the artifact has no document instruction).
    direct = Embedder(artifact_dir).encode_documents(images=[payload["path"]])
    np.testing.assert_allclose(index.vectors()[5], direct[0], atol=1e-6)


def test_index_pattern_selects_files(artifact_dir, digits_dir, tmp_path, capsys):
    out = tmp_path / "eval_only"
    code, _, err = run_cli(
        capsys,
        "index",
        "--model",
        artifact_dir,
        "--images",
        digits_dir / "images",
        "--pattern",
        "eval_*",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, err
    ids = Index.load(out).ids
    assert ids and all(i.startswith("eval_") for i in ids)
    assert len(ids) == len(list((digits_dir / "images").glob("eval_*.png")))


def test_query_text_matches_library_search(image_index, artifact_dir, capsys):
    path, index = image_index
    text = "the digits are 4 and 7"
    result = query_json(capsys, artifact_dir, path, text, "-k", "4")
    embedder = Embedder(artifact_dir)
    scores, ids = index.search(embedder.encode_queries(texts=[text]), k=4)
    assert [r["id"] for r in result["results"]] == ids[0]
    np.testing.assert_allclose([r["score"] for r in result["results"]], scores[0], atol=1e-6)
    assert [r["rank"] for r in result["results"]] == [1, 2, 3, 4]
    # Text queries get the instruction trained for text->image (not a majority vote).
    assert result["query"]["instruction"] == embedder.artifact.instructions["directions"]["text->image"]
    assert result["results"][0]["payload"]["path"].endswith(ids[0][0])


def test_query_table_output(image_index, artifact_dir, capsys):
    path, _ = image_index
    code, out, _ = run_cli(
        capsys, "query", "--model", artifact_dir, "--index", path, "the largest digit is 9", "-k", "3"
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "payload"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert all(line.split()[2].endswith(".png") for line in lines[1:])


def test_query_image_finds_itself_without_instruction(image_index, digits_dir, artifact_dir, capsys):
    path, index = image_index
    name = index.ids[17]
    image = digits_dir / "images" / name
    # With no instruction the query embedding *is* the document embedding: cosine 1.
    result = query_json(capsys, artifact_dir, path, "--image", image, "--instruction", "")
    top = result["results"][0]["score"]
    assert top > 0.99999
    assert name in [r["id"] for r in result["results"] if r["score"] == top]
    # Text + image together is a different query from the image alone.
    both = query_json(
        capsys, artifact_dir, path, "the digits are 1 and 2", "--image", image, "--instruction", ""
    )
    assert both["query"]["image"] == str(image)
    assert both["results"][0]["score"] != top


def test_text_and_image_query_on_an_image_index_needs_no_instruction(
    image_index, digits_dir, artifact_dir, capsys
):
    """The digits model trains text->image and image->text only. A text+image query on an index
    of images is for finding images: it gets the instruction trained for that."""
    path, index = image_index
    image, text = digits_dir / "images" / index.ids[3], "the digits add up to 9"
    embedder = Embedder(artifact_dir)
    directions = embedder.artifact.instructions["directions"]
    assert not any(name.startswith("text+image->") for name in directions)
    with pytest.raises(InputError, match="instruction="):  # the library alone cannot know the target
        embedder.encode_queries([text], [str(image)])
    result = query_json(capsys, artifact_dir, path, text, "--image", image, "-k", "4")
    assert directions["text->image"] and result["query"]["instruction"] == directions["text->image"]
    scores, ids = index.search(
        embedder.encode_queries([text], [str(image)], instruction=directions["text->image"]), k=4
    )
    assert [r["id"] for r in result["results"]] == ids[0]
    np.testing.assert_allclose([r["score"] for r in result["results"]], scores[0], atol=1e-6)


def test_index_dataset_and_query(artifact_dir, digits_dir, tmp_path, capsys):
    from lame.data.dataset import load_eval

    out = tmp_path / "by_data" / ""
    code, stdout, err = run_cli(
        capsys,
        "index",
        "--model",
        artifact_dir,
        "--data",
        digits_dir,
        "--out",
        str(out),
        "--no-progress",
        "--storage",
        "float16",
    )
    assert code == 0, err
    summary = json.loads(stdout)
    expected = []
    for row in load_eval(digits_dir):
        for item in row.candidates:
            image = Path(item.image).relative_to(digits_dir.resolve()).as_posix() if item.image else None
            item_id = " :: ".join(p for p in (image, item.text) if p)
            if item_id not in expected:
                expected.append(item_id)
    index = Index.load(out)
    assert summary["count"] == len(index) == len(expected)
    assert index.ids == expected and index.storage == "float16"
    text_ids = [i for i in expected if not i.endswith(".png")]
    assert text_ids and index.payload(text_ids[0]) == {"text": text_ids[0]}
    result = query_json(
        capsys, artifact_dir, out, "--image", digits_dir / "images" / "eval_00003.png", "-k", "2"
    )
    assert len(result["results"]) == 2
    assert result["results"][0]["score"] >= result["results"][1]["score"]
    # A dataset's index mixes texts and images: no trained direction starts from text+image
    # and the target is not one modality, so the CLI asks for its flag (not Python's keyword).
    code, _, err = run_cli(
        capsys,
        "query",
        "--model",
        artifact_dir,
        "--index",
        out,
        "the digits add up to 9",
        "--image",
        digits_dir / "images" / "eval_00003.png",
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "--instruction TEXT" in err and "--task NAME" in err and "instruction=" not in err, err


def test_saved_index_round_trip(image_index, tmp_path):
    path, index = image_index
    index.save(tmp_path / "copy")
    again = Index.load(tmp_path / "copy")
    queries = np.random.default_rng(0).normal(size=(5, index.dim)).astype(np.float32)
    (s1, i1), (s2, i2) = index.search(queries, 10), again.search(queries, 10)
    assert i1 == i2 and np.array_equal(s1, s2)
    assert [again.payload(i) for i in i2[0]] == [index.payload(i) for i in i1[0]]


def test_bad_model_path_is_one_line_error(digits_dir, tmp_path, capsys):
    code, out, err = run_cli(
        capsys,
        "index",
        "--model",
        tmp_path / "no_such_artifact",
        "--images",
        digits_dir / "images",
        "--out",
        tmp_path / "idx",
    )
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("lame-search: error: ")
    assert "no_such_artifact" in err
    assert not (tmp_path / "idx.npz").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["index", "--out", "{tmp}/x"], "exactly one of --images DIR or --data DIR"),
        (["index", "--images", "{tmp}/none", "--out", "{tmp}/x"], "image directory not found"),
        (["index", "--data", "{tmp}", "--out", "{tmp}/x"], "has no eval.jsonl"),
        (["query", "--index", "{index}"], "give a query TEXT, --image PATH, or both"),
        (["query", "--index", "{index}", "--image", "{tmp}/none.png"], "image file not found"),
        (["query", "--index", "{tmp}/none", "hello"], "index file not found"),
        (["index", "--images", "{tmp}", "--out", "{index}"], "exists; pass --force"),
    ],
)
def test_user_errors(argv, message, image_index, artifact_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, index=image_index[0]) for a in argv]
    code, _, err = run_cli(capsys, argv[0], "--model", artifact_dir, *argv[1:])
    assert code == 2
    assert message in err and err.count("\n") == 1, err


def test_module_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "lame_runtime.cli.search", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "index" in out.stdout and "query" in out.stdout
