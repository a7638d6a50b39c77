"""Reliability of the runtime's inputs: special-token strings in user text, bad images named by
item, single-string arguments, empty batches, NaN rows, no network, dataset path escapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lame_runtime import Embedder
from lame_runtime.embedder import _unit_rows
from lame_runtime.errors import InputError, InputTypeError, IntegrityError, LameError, MissingFileError
from lame_runtime.inputs.preprocess import Preprocessor
from lame_runtime.inputs.text import SPECIAL_TOKENS


@pytest.fixture(scope="module")
def embedder(artifact_dir) -> Embedder:
    return Embedder(artifact_dir)


@pytest.fixture(scope="module")
def image_path(digits_dir) -> str:
    return str(sorted((digits_dir / "images").glob("*.png"))[0])


# ----------------------------------------------------------------------- special tokens
@pytest.mark.parametrize("role,token", sorted(SPECIAL_TOKENS.items()))
@pytest.mark.parametrize("with_image", [False, True])
def test_special_token_strings_are_plain_text(embedder, image_path, role, token, with_image):
    """Every special-token string, alone and inside a sentence, through the real tokenizer and
    the real ONNX session, with and without an image row in the batch."""
    text_proc = embedder.preprocessor.text
    structural = {i for r, i in text_proc.special.items() if r != "unk"}
    for text in (token, f"the digits are 3 {token} and 4", token * 3):
        ids = text_proc.encode_text(text)
        assert not structural.intersection(ids), (text, ids)
        assert ids != [text_proc.special[role]]
    texts = [f"the digits are 3 {token} and 4", "the digits are 3 and 4"]
    images = [None, None]
    if with_image:
        texts.append(token)
        images.append(image_path)
    feed = embedder.preprocessor(texts, images)
    n_image = int((feed["input_ids"] == text_proc.special["image"]).sum())
    assert n_image == (embedder.preprocessor.image.num_tokens if with_image else 0)
    vectors = embedder.encode(texts=texts, images=images)
    assert vectors.shape == (len(texts), embedder.dim) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_special_token_text_embeds_like_its_characters(embedder):
    """ "[IMG]" in a document is the characters [, I, M, G, ]: same ids as after the fix,
    different from the image token, and the row's embedding does not depend on batch-mates."""
    alone = embedder.encode(texts=["a [IMG] b"])
    with_others = embedder.encode(texts=["a [IMG] b", "the digits are 1 and 2"])
    np.testing.assert_allclose(alone[0], with_others[0], atol=1e-5)


# ----------------------------------------------------------------------- argument types
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(images="a.png"), "images must be a list"),
        (dict(images=Path("a.png")), "got a single path"),
        (dict(texts="hello"), "got a single string"),
        (dict(images=np.zeros((16, 64, 3), np.uint8)), "got a single array"),
        (dict(images=Image.new("RGB", (64, 16))), "got a single Image"),
        (dict(texts={"a", "b"}), "got a single set"),
    ],
)
def test_single_item_instead_of_list(embedder, kwargs, message):
    with pytest.raises(InputTypeError, match=message) as caught:
        embedder.encode(**kwargs)
    assert "pass a list" in str(caught.value)


def test_empty_batch_has_shape_0_by_dim(embedder):
    for kwargs in (dict(texts=[]), dict(images=[]), dict(texts=[], images=[]), dict(texts=(t for t in []))):
        out = embedder.encode(**kwargs)
        assert out.shape == (0, embedder.dim) and out.dtype == np.float32
    assert embedder.encode_queries(texts=[]).shape == (0, embedder.dim)
    assert embedder.encode_documents(images=[]).shape == (0, embedder.dim)


def test_long_and_empty_text_truncate_with_a_warning(embedder):
    limit = embedder.preprocessor.text.max_text_tokens
    huge = "the digits are 3 and 4 " * 200_000  # ~4.6 MB: cut before tokenising
    with pytest.warns(UserWarning, match=f"truncated to {limit} tokens"):
        feed = embedder.preprocessor([huge])
    assert feed["attention_mask"].sum() == 1 + limit
    moderate = "the digits are 3 and 4 " * 40
    with pytest.warns(UserWarning, match="truncated"):
        a = embedder.encode(texts=[moderate])
    with pytest.warns(UserWarning, match="truncated"):
        b = embedder.encode(texts=[huge])
    np.testing.assert_allclose(a, b, atol=1e-6)  # the same first `limit` tokens
    with pytest.warns(UserWarning, match="empty text"):
        empty = embedder.encode(texts=[""])
    assert np.isfinite(empty).all()


# ----------------------------------------------------------------------- NaN rows
def test_nan_row_does_not_unnormalise_the_others():
    rows = np.array([[3.0, 4.0], [np.nan, 1.0], [0.0, 2.0], [np.inf, 0.0]], np.float32)
    with pytest.warns(RuntimeWarning, match=r"rows \[1, 3\]"):
        out = _unit_rows(rows)
    np.testing.assert_allclose(out[[0, 2]], [[0.6, 0.8], [0.0, 1.0]], atol=1e-7)
    assert np.isnan(out[[1, 3]]).all()
    assert out.dtype == np.float32


# ----------------------------------------------------------------------- bad images
def _bad_image_files(tmp_path: Path, good: str) -> dict[str, Path]:
    files = {}
    data = Path(good).read_bytes()
    files["truncated"] = tmp_path / "truncated.png"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty_file"] = tmp_path / "empty.png"
    files["empty_file"].write_bytes(b"")
    files["not_an_image"] = tmp_path / "text.png"
    files["not_an_image"].write_text("hello, I am not a PNG")
    files["absurd_aspect"] = tmp_path / "wide.png"
    Image.new("RGB", (4000, 2)).save(files["absurd_aspect"])
    return files


def test_bad_image_files_are_named_by_index_and_path(embedder, image_path, tmp_path):
    for name, path in _bad_image_files(tmp_path, image_path).items():
        with pytest.raises(InputError) as caught:
            embedder.encode(images=[image_path, image_path, str(path)])
        message = str(caught.value)
        assert message.startswith(f"images[2] ('{path}')"), (name, message)
    with pytest.raises(MissingFileError, match=r"images\[1\] \('nope.png'\): image file not"):
        embedder.encode(images=[image_path, "nope.png"])
    # The index is the caller's, not the position inside an internal batch.
    with pytest.raises(InputError, match=r"images\[5\]"):
        embedder.encode(images=[image_path] * 5 + [str(tmp_path / "truncated.png")], batch_size=2)


@pytest.mark.parametrize(
    "array,error,message",
    [
        (np.zeros((0, 0, 3), np.uint8), InputError, "empty"),
        (np.zeros((0, 5), np.uint8), InputError, "empty"),
        (np.zeros((2, 3, 4, 5), np.uint8), InputError, "must be HxW"),
        (np.zeros((8,), np.uint8), InputError, "must be HxW"),
        (np.zeros((8, 8, 2), np.uint8), InputError, "must be HxW"),
        (np.zeros((8, 8, 3), np.int32), InputTypeError, "uint8, uint16 or float"),
        (np.zeros((8, 8, 3), np.complex64), InputTypeError, "uint8, uint16 or float"),
        (np.full((8, 8, 3), np.nan, np.float32), InputError, "NaN or infinite"),
        (np.full((8, 8, 3), np.inf, np.float64), InputError, "NaN or infinite"),
        (np.full((8, 8, 3), 3.0, np.float32), InputError, r"\[0, 1\]"),
        (np.zeros((1, 500, 3), np.uint8), InputError, "aspect ratio"),
    ],
)
def test_bad_image_arrays(embedder, array, error, message):
    with pytest.raises(error, match=message) as caught:
        embedder.encode(images=[None, array], texts=["x", None])
    assert str(caught.value).startswith(f"images[1] (array {array.dtype} {array.shape})")


def test_float_images_in_unit_range_match_uint8(embedder):
    pixels = np.random.default_rng(0).integers(0, 256, size=(16, 64, 3)).astype(np.uint8)
    as_float = pixels.astype(np.float32) / 255.0
    np.testing.assert_allclose(
        embedder.encode(images=[pixels]), embedder.encode(images=[as_float]), atol=1e-6
    )


def test_zero_sized_pil_image(embedder):
    with pytest.raises(InputError, match="empty"):
        embedder.encode(images=[Image.new("RGB", (0, 0))])


# ----------------------------------------------------------------------- no network
def test_runtime_opens_no_network_connection(artifact_dir, tmp_path):
    """Import lame_runtime, encode and search with every way of opening a socket disabled
    (in a fresh interpreter, so nothing was imported before the patch)."""
    script = textwrap.dedent(f"""
        import socket

        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        socket.socket = refuse
        socket.create_connection = refuse
        socket.socketpair = refuse
        socket.getaddrinfo = refuse
        import numpy as np
        import lame_runtime
        from lame_runtime import Embedder, Index

        embedder = Embedder({str(artifact_dir)!r})
        vectors = embedder.encode(texts=["the digits are 1 and 2", "the sum is 9"])
        index = Index(embedder.dim)
        index.add(vectors, ["a", "b"])
        index.save({str(tmp_path / "idx")!r})
        scores, ids = Index.load({str(tmp_path / "idx")!r}).search(vectors, k=1)
        assert ids == [["a"], ["b"]], ids
        print("ok")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


# ----------------------------------------------------------------------- path escapes
def _dataset_with_candidate(root: Path, image: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    row = {"query": {"text": "q"}, "candidates": [{"image": image}, {"text": "other"}]}
    (root / "eval.jsonl").write_text(json.dumps(row) + "\n")
    (root / "train.jsonl").write_text(json.dumps({"query": {"text": "q"}, "target": {"image": image}}) + "\n")
    return root


def _escapes(tmp_path: Path, image_path: str) -> list[tuple[str, Path]]:
    outside = tmp_path / "outside.png"
    outside.write_bytes(Path(image_path).read_bytes())
    cases = []
    for name, image in (
        ("dotdot", "../outside.png"),
        ("absolute", str(outside)),
        ("symlink", "images/link.png"),
        ("nested", "images/../../outside.png"),
    ):
        root = _dataset_with_candidate(tmp_path / name, image)
        (root / "images").mkdir(exist_ok=True)
        if name == "symlink":
            (root / "images" / "link.png").symlink_to(outside)
        cases.append((image, root))
    return cases


def test_dataset_image_paths_cannot_escape(tmp_path, image_path):
    from lame.data.dataset import DatasetError, load_eval, load_train
    from lame_runtime.cli.search import dataset_items

    for image, root in _escapes(tmp_path, image_path):
        with pytest.raises(IntegrityError, match="outside the dataset folder|must be relative"):
            dataset_items(root)
        for load in (load_eval, load_train):
            with pytest.raises(DatasetError, match="outside the dataset folder|must be relative"):
                load(root)
    # A symlink that stays inside the folder is fine.
    inside = _dataset_with_candidate(tmp_path / "inside", "images/link.png")
    (inside / "images").mkdir()
    (inside / "images" / "real.png").write_bytes(Path(image_path).read_bytes())
    (inside / "images" / "link.png").symlink_to(inside / "images" / "real.png")
    assert [item[0] for item in dataset_items(inside)] == ["images/link.png", "other"]
    assert load_eval(inside)[0].candidates[0].image.endswith("link.png")


def test_image_dir_symlink_outside_is_refused(tmp_path, image_path):
    from lame_runtime.retrieval.indexing import image_items

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(Path(image_path).read_bytes())
    (tmp_path / "elsewhere.png").write_bytes(Path(image_path).read_bytes())
    assert [i[0] for i in image_items(tmp_path / "imgs")] == ["a.png"]
    (tmp_path / "imgs" / "b.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(IntegrityError, match="links outside the image directory"):
        image_items(tmp_path / "imgs")


# ----------------------------------------------------------------------- documented errors
def test_every_runtime_error_is_a_lame_error(embedder):
    """Spot check that the runtime's user errors are LameErrors (and builtin subclasses)."""
    from lame_runtime import Index

    failures = [
        lambda: embedder.encode(texts=["x"], batch_size=0),
        lambda: embedder.encode(texts=[3]),
        lambda: Index(0),
        lambda: Index(4).search(np.ones((1, 3), np.float32)),
        lambda: Preprocessor.from_dir("/nonexistent"),
    ]
    for fail in failures:
        with pytest.raises(LameError), warnings.catch_warnings():
            fail()
