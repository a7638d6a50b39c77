"""A table of bad inputs across the APIs (Embedder, Index, Preprocessor, image loading) and the
CLIs (lame-search, lame-train, lame-eval, lame-data, lame-export): each must raise the
documented error type (APIs) or exit 2 with one `prog: error: ...` line (CLIs), and the message
must name the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from lame_runtime import Embedder, Index
from lame_runtime.errors import (
    ArtifactError,
    IndexFileError,
    InputError,
    InputTypeError,
    IntegrityError,
    MissingFileError,
)
from lame_runtime.inputs.images import ImageConfig, load_image
from lame_runtime.inputs.preprocess import Preprocessor
from lame_runtime.inputs.text import TextProcessor


class Context:
    """Real files the cases point at, built once per module."""

    def __init__(self, root: Path, artifact: Path, data: Path, ckpt: Path):
        self.root, self.artifact, self.data, self.ckpt = root, artifact, data, ckpt
        self.image = str(sorted((data / "images").glob("*.png"))[0])
        self.truncated = root / "truncated.png"
        raw = Path(self.image).read_bytes()
        self.truncated.write_bytes(raw[: len(raw) // 2])
        self.bad_json = root / "bad.json"
        self.bad_json.write_text('{"format": "lame-index", ')
        (root / "badpre").mkdir()
        (root / "badpre" / "preprocessor_config.json").write_text("{not json")
        (root / "noimage").mkdir()
        (root / "noimage" / "preprocessor_config.json").write_text('{"max_text_tokens": 8}')
        self.escape = root / "escape"
        self.escape.mkdir()
        row = {"query": {"text": "q"}, "candidates": [{"image": "../truncated.png"}, {"text": "t"}]}
        (self.escape / "eval.jsonl").write_text(json.dumps(row) + "\n")
        self.corrupt_dir = root / "corrupt_images"
        self.corrupt_dir.mkdir()
        (self.corrupt_dir / "a.png").write_bytes(raw)
        (self.corrupt_dir / "b.png").write_bytes(raw[:40])
        self._embedder = None
        self.index = Index(8, backend="numpy")
        self.index.add(np.eye(8, dtype=np.float32)[:3], ["a", "b", "c"])

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.artifact)
        return self._embedder


def nan_rows() -> np.ndarray:
    rows = np.ones((2, 8), np.float32)
    rows[1, 3] = np.nan
    return rows


def tokenizer_without_specials(ctx: Context):
    from tokenizers import Tokenizer, models

    return TextProcessor(Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))


# (name, call, error type, substring of the message)
API_CASES: list[tuple[str, Callable[[Context], Any], type, str]] = [
    ("embedder missing artifact", lambda c: Embedder(c.root / "nope"), ArtifactError, "nope"),
    (
        "embedder unknown backend",
        lambda c: Embedder(c.artifact, backend="cuda"),
        ValueError,
        "backend must be one of",
    ),
    (
        "images as a single path",
        lambda c: c.embedder.encode(images="a.png"),
        InputTypeError,
        "images must be a list",
    ),
    ("texts as a single string", lambda c: c.embedder.encode(texts="hello"), InputTypeError, "single string"),
    (
        "text not a string",
        lambda c: c.embedder.encode(texts=["ok", 3]),
        InputTypeError,
        "texts[1] must be a string",
    ),
    (
        "unequal texts and images",
        lambda c: c.embedder.encode(texts=["a", "b"], images=[None]),
        InputError,
        "equal lengths",
    ),
    ("nothing given", lambda c: c.embedder.encode(), InputError, "give texts, images"),
    (
        "row without text or image",
        lambda c: c.embedder.encode(texts=["a", None]),
        InputError,
        "row 1 has neither text nor image",
    ),
    (
        "batch size zero",
        lambda c: c.embedder.encode(texts=["a"], batch_size=0),
        InputError,
        "batch_size must be a positive integer",
    ),
    (
        "missing image file",
        lambda c: c.embedder.encode(images=[c.image, "/no/such.png"]),
        MissingFileError,
        "images[1] ('/no/such.png'): image file not found",
    ),
    (
        "truncated image file",
        lambda c: c.embedder.encode(images=[str(c.truncated)]),
        InputError,
        "truncated.png",
    ),
    (
        "0x0 image array",
        lambda c: c.embedder.encode(images=[np.zeros((0, 0, 3), np.uint8)]),
        InputError,
        "empty",
    ),
    (
        "NaN image array",
        lambda c: c.embedder.encode(images=[np.full((4, 4), np.nan)]),
        InputError,
        "NaN or infinite",
    ),
    (
        "unsupported image object",
        lambda c: c.embedder.encode(images=[object()]),
        InputTypeError,
        "unsupported image type object",
    ),
    (
        "instruction not a string",
        lambda c: c.embedder.encode_queries(texts=["a"], instruction=5),
        InputTypeError,
        "instruction must be a string",
    ),
    (
        "unknown task",
        lambda c: c.embedder.encode_queries(texts=["a"], task="nope"),
        InputError,
        "unknown task 'nope'",
    ),
    (
        "ambiguous instruction",
        lambda c: c.embedder.encode_queries(texts=["a"], images=[c.image]),
        InputError,
        "cannot choose a query instruction",
    ),
    ("index dim zero", lambda c: Index(0), InputError, "dim must be a positive integer"),
    ("index unknown storage", lambda c: Index(4, storage="bf16"), InputError, "storage must be one of"),
    ("index unknown backend", lambda c: Index(4, backend="gpu"), InputError, "backend must be one of"),
    (
        "integer vectors",
        lambda c: c.index.add(np.ones((1, 8), np.int64), ["x"]),
        InputTypeError,
        "floating point",
    ),
    ("NaN vector row", lambda c: c.index.add(nan_rows(), ["x", "y"]), InputError, "row 1 has NaN"),
    ("zero vector", lambda c: c.index.add(np.zeros((1, 8), np.float32), ["x"]), InputError, "all zeros"),
    (
        "duplicate id",
        lambda c: c.index.add(np.ones((1, 8), np.float32), ["a"]),
        InputError,
        "duplicate id 'a'",
    ),
    (
        "ids as one string",
        lambda c: c.index.add(np.ones((3, 8), np.float32), "xyz"),
        InputTypeError,
        "ids must be a list",
    ),
    (
        "payload not JSON",
        lambda c: c.index.add(np.ones((1, 8), np.float32), ["x"], [{1, 2}]),
        InputTypeError,
        "not JSON-serialisable",
    ),
    (
        "k zero",
        lambda c: c.index.search(np.ones((1, 8), np.float32), k=0),
        InputError,
        "k must be a positive integer",
    ),
    ("query of the wrong dim", lambda c: c.index.search(np.ones((1, 5), np.float32)), InputError, "dim 5"),
    ("remove unknown id", lambda c: c.index.remove(["a", "zz"]), KeyError, "zz"),
    ("load missing index", lambda c: Index.load(c.root / "none"), MissingFileError, "index file not found"),
    ("load truncated index json", lambda c: Index.load(c.bad_json), IndexFileError, "not valid JSON"),
    (
        "preprocessor folder missing",
        lambda c: Preprocessor.from_dir(c.root / "none"),
        MissingFileError,
        "preprocessor_config.json",
    ),
    (
        "preprocessor config not JSON",
        lambda c: Preprocessor.from_dir(c.root / "badpre"),
        InputError,
        "not valid JSON",
    ),
    (
        "preprocessor config without image",
        lambda c: Preprocessor.from_dir(c.root / "noimage"),
        InputError,
        "'image' object",
    ),
    ("tokenizer lacking special tokens", tokenizer_without_specials, InputError, "lacks the special token"),
    ("preprocess empty batch", lambda c: c.embedder.preprocessor([]), InputError, "empty input"),
    ("image size not divisible", lambda c: ImageConfig(height=15), InputError, "divisible"),
    (
        "image array of rank 4",
        lambda c: load_image(np.zeros((2, 2, 2, 2), np.uint8)),
        InputError,
        "must be HxW",
    ),
    ("absurd aspect ratio", lambda c: load_image(np.zeros((1, 900), np.uint8)), InputError, "aspect ratio"),
]


def _search(*args):
    from lame_runtime.cli.search import main

    return "lame-search", main, args


def _train(*args):
    from lame.cli.train import main

    return "lame-train", main, args


def _eval(*args):
    from lame.cli.evaluate import main

    return "lame-eval", main, args


def _data(*args):
    from lame.cli.data import main

    return "lame-data", main, args


def _export(*args):
    from lame_export.cli import main

    return "lame-export", main, args


# (name, argv builder, substring of the one-line error)
CLI_CASES: list[tuple[str, Callable[[Context], tuple], str]] = [
    (
        "search: missing artifact",
        lambda c: _search(
            "index", "--model", c.root / "nope", "--images", c.data / "images", "--out", c.root / "o1"
        ),
        "nope",
    ),
    (
        "search: --images and --data",
        lambda c: _search(
            "index",
            "--model",
            c.artifact,
            "--images",
            c.data / "images",
            "--data",
            c.data,
            "--out",
            c.root / "o2",
        ),
        "exactly one of --images DIR or --data",
    ),
    (
        "search: --force with --resume",
        lambda c: _search(
            "index",
            "--model",
            c.artifact,
            "--images",
            c.data / "images",
            "--out",
            c.root / "o3",
            "--force",
            "--resume",
        ),
        "at most one of",
    ),
    (
        "search: escaping dataset path",
        lambda c: _search("index", "--model", c.artifact, "--data", c.escape, "--out", c.root / "o4"),
        "leads outside the dataset folder",
    ),
    (
        "search: corrupt image",
        lambda c: _search(
            "index", "--model", c.artifact, "--images", c.corrupt_dir, "--out", c.root / "o5", "--no-progress"
        ),
        "b.png",
    ),
    (
        "search: query without text or image",
        lambda c: _search("query", "--model", c.artifact, "--index", c.root / "none"),
        "give a query TEXT",
    ),
    (
        "search: corrupt index",
        lambda c: _search("query", "--model", c.artifact, "--index", c.bad_json, "hi"),
        "not valid JSON",
    ),
    (
        "train: missing dataset",
        lambda c: _train("--data", c.root / "nodata", "--out", c.root / "t1"),
        "dataset directory not found",
    ),
    (
        "train: unknown preset",
        lambda c: _train("--data", c.data, "--out", c.root / "t2", "--preset", "nosuch"),
        "unknown preset 'nosuch'",
    ),
    (
        "train: bad image size",
        lambda c: _train("--data", c.data, "--out", c.root / "t3", "--preset", "tiny", "--image-size", "abc"),
        "image size 'abc'",
    ),
    ("eval: missing checkpoint", lambda c: _eval("--ckpt", c.root / "nockpt", "--data", c.data), "nockpt"),
    ("eval: dataset without eval.jsonl", lambda c: _eval("--ckpt", c.ckpt, "--data", c.root), "eval.jsonl"),
    (
        "data: negative image count",
        lambda c: _data("digits", c.root / "d1", "--train-images", "-5"),
        "must be >= 1",
    ),
    (
        "export: missing checkpoint",
        lambda c: _export("--ckpt", c.root / "nockpt", "--out", c.root / "e1"),
        "checkpoint directory not found",
    ),
    (
        "export: folder that is not a checkpoint",
        lambda c: _export("--ckpt", c.escape, "--out", c.root / "e2"),
        "config.json",
    ),
]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, artifact_dir, digits_dir, trained_ckpt) -> Context:
    return Context(tmp_path_factory.mktemp("bad"), artifact_dir, digits_dir, trained_ckpt)


def test_the_table_is_large_enough():
    assert len(API_CASES) + len(CLI_CASES) >= 30
    names = [c[0] for c in API_CASES + CLI_CASES]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name,call,error,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(ctx, name, call, error, message):
    with pytest.raises(error) as caught:
        call(ctx)
    text = caught.value.args[0] if isinstance(caught.value, KeyError) else str(caught.value)
    assert message in text, f"{name}: {text!r}"


@pytest.mark.parametrize("name,build,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(ctx, capsys, name, build, message):
    prog, main, args = build(ctx)
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 2, (name, err)
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err, err


def test_unseen_bad_inputs_are_also_handled(ctx):
    """Inputs not in the table above (a separate set, so the table is not all that is handled): still
    LameErrors."""
    from lame_runtime.errors import LameError

    unseen = [
        lambda: ctx.embedder.encode(texts=[b"bytes"]),
        lambda: ctx.embedder.encode(images=[np.zeros((16, 64, 3), np.float16) + 7]),
        lambda: ctx.embedder.encode(images=[str(ctx.bad_json)]),
        lambda: ctx.embedder.encode(texts=["a"], batch_size=True),
        lambda: ctx.index.add([[1.0] * 8, [1.0] * 7], ["p", "q"]),
        lambda: ctx.index.add(np.ones((1, 8), np.float32), [None]),
        lambda: ctx.index.search("not a matrix"),
        lambda: Index.load(ctx.truncated),
        lambda: ImageConfig(resample="lanczos9"),
    ]
    for case in unseen:
        with pytest.raises(LameError):
            case()
    with pytest.raises(IntegrityError):
        from lame_runtime.cli.search import dataset_items

        dataset_items(ctx.escape)
