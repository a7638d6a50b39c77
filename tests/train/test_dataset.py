"""Tests for lame.data.dataset: the dataset directory reader and validator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lame.data.dataset import (
    DatasetError,
    EvalRow,
    Item,
    TrainRow,
    check_fixed_size,
    iter_texts,
    load_eval,
    load_train,
)

TRAIN_ROWS = [
    {
        "query": {"text": "a red cat"},
        "target": {"image": "img/cat.png"},
        "answer": "cat",
        "rationale": "red . cat",
        "negatives": [{"image": "img/dog.png"}, {"text": "a dog", "image": "img/dog.png"}],
        "instruction": "Find the image.",
        "task": "t2i",
        "extra_key": "ignored",
    },
    {"query": {"image": "img/dog.png", "text": "what animal?"}, "target": {"text": "dog"}},
]
EVAL_ROWS = [
    {
        "query": {"text": "a red cat"},
        "candidates": [{"image": "img/dog.png"}, {"image": "img/cat.png"}],
        "label": 1,
        "task": "animals",
        "instruction": "Find the image.",
    },
    {"query": {"image": "img/cat.png"}, "candidates": [{"text": "cat"}, {"text": "dog"}]},
]


def write_jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_dataset(root: Path, train: list | None = None, eval_: list | None = None) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name in ("cat.png", "dog.png"):
        (root / "img" / name).write_bytes(b"not really a png; only existence is checked")
    (root / "notes").mkdir(exist_ok=True)
    (root / "notes" / "readme.txt").write_text("a folder without frames")
    write_jsonl(root / "train.jsonl", TRAIN_ROWS if train is None else train)
    write_jsonl(root / "eval.jsonl", EVAL_ROWS if eval_ is None else eval_)
    return root


def test_round_trip_train(tmp_path):
    root = make_dataset(tmp_path)
    rows = load_train(root)
    cat, dog = str((root / "img/cat.png").resolve()), str((root / "img/dog.png").resolve())
    assert rows == [
        TrainRow(
            query=Item(text="a red cat"),
            target=Item(image=cat),
            answer="cat",
            rationale="red . cat",
            negatives=[Item(image=dog), Item(text="a dog", image=dog)],
            instruction="Find the image.",
            task="t2i",
        ),
        TrainRow(query=Item(text="what animal?", image=dog), target=Item(text="dog")),
    ]
    assert Path(rows[0].target.image).is_absolute()


def test_round_trip_eval(tmp_path):
    root = make_dataset(tmp_path)
    rows = load_eval(str(root))
    cat, dog = str((root / "img/cat.png").resolve()), str((root / "img/dog.png").resolve())
    assert rows == [
        EvalRow(
            query=Item(text="a red cat"),
            candidates=[Item(image=dog), Item(image=cat)],
            label=1,
            task="animals",
            instruction="Find the image.",
        ),
        EvalRow(query=Item(image=cat), candidates=[Item(text="cat"), Item(text="dog")]),
    ]
    assert rows[1].label == 0 and rows[1].task == "default"


def test_blank_lines_are_skipped_but_counted(tmp_path):
    root = make_dataset(tmp_path)
    lines = [json.dumps(TRAIN_ROWS[1]), "", json.dumps({"query": {}, "target": {"text": "x"}})]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetError, match=r"^train\.jsonl:3: query has neither 'text', 'image' nor 'video'$"
    ):
        load_train(root)


def test_iter_texts_yields_every_train_text(tmp_path):
    root = make_dataset(tmp_path)
    assert list(iter_texts(root)) == [
        "a red cat",
        "a dog",
        "cat",
        "red . cat",
        "Find the image.",
        "what animal?",
        "dog",
    ]


def test_item_key_is_stable_and_unambiguous():
    assert Item(text="a", image="/x.png").key() == Item(text="a", image="/x.png").key()
    keys = {
        Item(text="a").key(),
        Item(image="a").key(),
        Item(text="a", image="b").key(),
        Item(text='a"|I:"b').key(),
        Item(text="null").key(),
    }
    assert len(keys) == 5


def test_check_images_false_skips_missing_files(tmp_path):
    root = make_dataset(tmp_path)
    (root / "img" / "cat.png").unlink()
    assert len(load_train(root, check_images=False)) == 2
    assert len(load_eval(root, check_images=False)) == 2


def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="dataset directory not found: .*nowhere"):
        load_train(tmp_path / "nowhere")


@pytest.mark.parametrize("loader, name", [(load_train, "train.jsonl"), (load_eval, "eval.jsonl")])
def test_missing_file(tmp_path, loader, name):
    root = make_dataset(tmp_path)
    (root / name).unlink()
    with pytest.raises(DatasetError, match=rf"^{name}: file not found"):
        loader(root)


def test_empty_file(tmp_path):
    root = make_dataset(tmp_path, train=[])
    with pytest.raises(DatasetError, match=r"^train\.jsonl: file has no rows"):
        load_train(root)


GOOD_TRAIN = TRAIN_ROWS[1]
GOOD_EVAL = EVAL_ROWS[1]

TRAIN_ERRORS = [
    ({"target": {"text": "x"}}, "missing required key 'query'"),
    (
        {**GOOD_TRAIN, "query": "a cat"},
        "query must be an object with 'text', 'image' and/or 'video', got string",
    ),
    ({**GOOD_TRAIN, "target": {}}, "target has neither 'text', 'image' nor 'video'"),
    ({**GOOD_TRAIN, "target": {"text": ""}}, "target has neither 'text', 'image' nor 'video'"),
    ({**GOOD_TRAIN, "query": {"text": 5}}, "'query.text' must be a string, got number"),
    (
        {**GOOD_TRAIN, "query": {"image": {"a": 1}}},
        "'query.image' must be a string or an array of strings, got object",
    ),
    ({**GOOD_TRAIN, "query": {"image": []}}, "'query.image' is an empty array"),
    ({**GOOD_TRAIN, "query": {"image": ["img/cat.png", 5]}}, "'query.image[1]' must be a non-empty string"),
    (
        {**GOOD_TRAIN, "query": {"image": ["img/cat.png", "img/gone.png"]}},
        "query.image[1] file not found: img/gone.png (looked for ",
    ),
    ({**GOOD_TRAIN, "query": {"image": ["../outside.png"]}}, "query.image[0]: '../outside.png' resolves to"),
    ({**GOOD_TRAIN, "target": {"video": 3}}, "'target.video' must be a string, got number"),
    ({**GOOD_TRAIN, "target": {"video": "clips/none"}}, "target.video file or folder not found: clips/none"),
    ({**GOOD_TRAIN, "target": {"video": "notes"}}, "target.video folder holds no frame files"),
    ({**GOOD_TRAIN, "target": {"video": "/abs/clip.mp4"}}, "target.video: absolute path '/abs/clip.mp4'"),
    ({**GOOD_TRAIN, "answer": 3}, "'answer' must be a string, got number"),
    ({**GOOD_TRAIN, "rationale": {"x": 1}}, "'rationale' must be a string, got object"),
    ({**GOOD_TRAIN, "instruction": True}, "'instruction' must be a string, got boolean"),
    ({**GOOD_TRAIN, "task": 1.5}, "'task' must be a string, got number"),
    ({**GOOD_TRAIN, "negatives": {"text": "x"}}, "'negatives' must be an array of items, got object"),
    (
        {**GOOD_TRAIN, "negatives": [{"text": "x"}, {}]},
        "negatives[1] has neither 'text', 'image' nor 'video'",
    ),
    (
        {**GOOD_TRAIN, "query": {"image": "img/missing.png"}},
        "query.image file not found: img/missing.png (looked for ",
    ),
    (
        {**GOOD_TRAIN, "negatives": [{"image": "img/gone.png"}]},
        "negatives[0].image file not found: img/gone.png",
    ),
]

EVAL_ERRORS = [
    ({"candidates": GOOD_EVAL["candidates"]}, "missing required key 'query'"),
    ({"query": {"text": "q"}}, "missing required key 'candidates'"),
    ({**GOOD_EVAL, "candidates": [{"text": "only one"}]}, "'candidates' needs at least 2 items, got 1"),
    ({**GOOD_EVAL, "candidates": "cat"}, "'candidates' must be an array of items, got string"),
    (
        {**GOOD_EVAL, "candidates": [{"text": "a"}, {"texts": "b"}]},
        "candidates[1] has neither 'text', 'image' nor 'video'",
    ),
    ({**GOOD_EVAL, "label": 2}, "label 2 out of range for 2 candidates"),
    ({**GOOD_EVAL, "label": -1}, "label -1 out of range for 2 candidates"),
    ({**GOOD_EVAL, "label": "0"}, "'label' must be an integer, got string"),
    ({**GOOD_EVAL, "label": True}, "'label' must be an integer, got boolean"),
    ({**GOOD_EVAL, "label": 1.0}, "'label' must be an integer, got number"),
    ({**GOOD_EVAL, "task": 7}, "'task' must be a string, got number"),
    (
        {**GOOD_EVAL, "candidates": [{"text": "a"}, {"image": "img/nope.png"}]},
        "candidates[1].image file not found: img/nope.png",
    ),
]


@pytest.mark.parametrize("bad_row, message", TRAIN_ERRORS)
def test_train_row_errors_name_file_and_line(tmp_path, bad_row, message):
    root = make_dataset(tmp_path, train=[GOOD_TRAIN, GOOD_TRAIN, bad_row])
    with pytest.raises(DatasetError) as info:
        load_train(root)
    assert str(info.value).startswith(f"train.jsonl:3: {message}")


@pytest.mark.parametrize("bad_row, message", EVAL_ERRORS)
def test_eval_row_errors_name_file_and_line(tmp_path, bad_row, message):
    root = make_dataset(tmp_path, eval_=[GOOD_EVAL, bad_row])
    with pytest.raises(DatasetError) as info:
        load_eval(root)
    assert str(info.value).startswith(f"eval.jsonl:2: {message}")


@pytest.mark.parametrize("loader, name", [(load_train, "train.jsonl"), (load_eval, "eval.jsonl")])
@pytest.mark.parametrize(
    "line, message",
    [
        ('{"query": ', "invalid JSON: Expecting value (column 11)"),
        ("[1, 2]", "row must be a JSON object, got array"),
        ('"just a string"', "row must be a JSON object, got string"),
    ],
)
def test_malformed_lines(tmp_path, loader, name, line, message):
    root = make_dataset(tmp_path)
    good = (root / name).read_text().splitlines()[0]
    (root / name).write_text(f"{good}\n{line}\n")
    with pytest.raises(DatasetError) as info:
        loader(root)
    assert str(info.value) == f"{name}:2: {message}"


def test_invalid_utf8(tmp_path):
    root = make_dataset(tmp_path)
    (root / "train.jsonl").write_bytes(b'{"query": {"text": "\xff"}, "target": {"text": "x"}}\n')
    with pytest.raises(DatasetError, match=r"^train\.jsonl:1: not valid UTF-8"):
        load_train(root)


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def _media_dataset(root: Path) -> Path:
    """Rows with several images and a video (a folder of frames and a file)."""
    make_dataset(root)
    (root / "clip").mkdir()
    for index in range(3):
        (root / "clip" / f"{index:03d}.png").write_bytes(b"frame")
    (root / "walk.mp4").write_bytes(b"only existence is checked")
    train = [
        {"query": {"text": "which?", "image": ["img/cat.png", "img/dog.png"]}, "target": {"text": "cat"}},
        {"query": {"video": "clip"}, "target": {"text": "a walk", "video": "walk.mp4"}},
        TRAIN_ROWS[1],
    ]
    eval_ = [{"query": {"text": "walk"}, "candidates": [{"video": "./clip/"}, {"image": ["img/dog.png"]}]}]
    write_jsonl(root / "train.jsonl", train)
    write_jsonl(root / "eval.jsonl", eval_)
    return root


def test_items_with_several_images_and_videos(tmp_path):
    root = _media_dataset(tmp_path)
    rows = load_train(root)
    cat, dog = str(root / "img" / "cat.png"), str(root / "img" / "dog.png")
    assert rows[0].query == Item("which?", images=[cat, dog])
    assert rows[0].query.images == (cat, dog) and rows[0].query.video is None
    assert rows[1].query == Item(video=str(root / "clip"))
    assert rows[1].target == Item("a walk", video=str(root / "walk.mp4"))
    assert rows[2].query.image == dog  # one image: Item.image as before
    with pytest.raises(ValueError, match="this item has 2 images; read Item.images"):
        _ = rows[0].query.image
    assert [row.where for row in rows] == ["train.jsonl:1", "train.jsonl:2", "train.jsonl:3"]
    (evaluated,) = load_eval(root)
    # A one-element list is the same item as the plain string; a folder path is normalised.
    assert evaluated.candidates == [Item(video=str(root / "clip")), Item(image=dog)]
    assert evaluated.candidates[1].key() == Item(image=dog).key()


def test_item_keys_tell_images_and_videos_apart():
    keys = {
        Item(image="a").key(),
        Item(images=["a", "b"]).key(),
        Item(images=["b", "a"]).key(),
        Item(video="a").key(),
        Item(image="a", video="a").key(),
    }
    assert len(keys) == 5
    with pytest.raises(ValueError, match="either image= or images="):
        Item(image="a", images=["b"])
    with pytest.raises(TypeError, match="takes a list of paths"):
        Item(images="a.png")


def test_fixed_size_check_names_the_row(tmp_path):
    root = _media_dataset(tmp_path)
    rows = load_train(root)
    check_fixed_size(rows[2:])  # one image per item: readable at a fixed size
    with pytest.raises(DatasetError, match=r"^train\.jsonl:1: query has 2 images; .*--resolution native"):
        check_fixed_size(rows)
    with pytest.raises(DatasetError, match=r"^train\.jsonl:2: query has a video; "):
        check_fixed_size(rows[1:])
    with pytest.raises(DatasetError, match=r"^eval\.jsonl:1: candidates\[0\] has a video; "):
        check_fixed_size(load_eval(root))
