"""Tests for lame.data.digits: the bundled handwritten-digit reasoning benchmark."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lame.cli.data import main as data_main
from lame.data.dataset import load_eval, load_train
from lame.data.digits import (
    INSTRUCTIONS,
    TASKS,
    Statement,
    build_digits,
    compose,
    family_statements,
    parse_statement,
    true_statement,
)

SMALL = dict(n_train_images=200, n_eval_images=400, eval_per_task=5)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("digits") / "ds"
    summary = build_digits(out, seed=3, **SMALL)
    return out, summary


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def image_digits(root: Path) -> dict[str, list[int]]:
    return {row["image"]: row["digits"] for row in read_jsonl(root / "images.jsonl")}


def text_or_digits(item: dict, digits: dict[str, list[int]]):
    return digits[item["image"]] if "image" in item else parse_statement(item["text"])


# ------------------------------------------------------------- statements


def test_every_family_statement_parses_back():
    for family in ("read", "sum", "max", "oddsum", "range", "countgt", "order"):
        for statement in family_statements(family):
            assert parse_statement(statement.text) == statement
            assert statement.family == family


def test_statement_texts_and_truth():
    read = Statement("read", (3, 7))
    assert read.text == "the digits are 3 and 7"
    assert read.holds([3, 7]) and not read.holds([7, 3])
    assert Statement("sum", (10,)).text == "the digits add up to 10"
    assert Statement("sum", (10,)).holds([3, 7])
    assert Statement("max", (7,)).text == "the largest digit is 7"
    assert Statement("max", (7,)).holds((3, 7))
    assert Statement("oddsum", (9,)).text == "the odd digits add up to 9"
    assert Statement("oddsum", (8,)).holds([3, 8, 5])
    assert Statement("oddsum", (0,)).holds([2, 4, 8])  # no odd digits sums to 0
    assert Statement("range", (5,)).text == "the largest minus the smallest is 5"
    assert Statement("range", (5,)).holds([3, 8, 5])
    assert Statement("countgt", (2, 6)).text == "exactly 2 digits are greater than 6"
    assert Statement("countgt", (1, 6)).text == "exactly 1 digit is greater than 6"
    assert Statement("countgt", (2, 6)).holds([7, 1, 9])
    assert not Statement("countgt", (2, 6)).holds([6, 1, 9])
    compound = Statement("order", (1, 14))
    assert compound.text == "the digits are in increasing order and add up to 14"
    assert compound.holds([1, 4, 9])
    assert not compound.holds([1, 9, 4])  # sum true, order false
    assert not compound.holds([1, 4, 8])  # order true, sum false
    assert not compound.holds([1, 4, 4, 5])  # strict order only
    assert Statement("order", (0, 14)).text.startswith("the digits are in decreasing order")
    assert Statement("order", (0, 14)).holds([9, 4, 1])


def test_unknown_text_is_rejected():
    with pytest.raises(ValueError):
        parse_statement("the digits are lovely")


def test_true_statement_holds_or_is_none():
    rng = np.random.default_rng(0)
    for family in ("read", "sum", "max", "oddsum", "range", "countgt"):
        assert true_statement(family, (3, 8), rng).holds((3, 8))
    assert true_statement("order", (3, 1, 2), rng) is None
    assert true_statement("order", (1, 2, 3), rng) == Statement("order", (1, 6))
    assert true_statement("order", (3, 2, 1), rng) == Statement("order", (0, 6))
    threshold_statement = true_statement("countgt", (9, 1, 8), rng)
    assert threshold_statement.holds((9, 1, 8)) and 2 <= threshold_statement.values[1] <= 7


def test_compose_centres_digits():
    glyph = np.full((16, 16), 255, dtype=np.uint8)
    two = compose([glyph, glyph])
    assert two.shape == (16, 64)
    assert two[:, :16].max() == 0 and two[:, 48:].max() == 0 and two[:, 16:48].min() == 255
    three = compose([glyph] * 3)
    assert three[:, :8].max() == 0 and three[:, 56:].max() == 0 and three[:, 8:56].min() == 255


# ------------------------------------------------------------------ build


def test_summary_matches_files(built):
    root, summary = built
    for name in ("train.jsonl", "eval.jsonl", "images.jsonl", "meta.json"):
        assert (root / name).is_file()
    assert summary["train_rows"] == len(read_jsonl(root / "train.jsonl"))
    assert summary["eval_rows"] == len(read_jsonl(root / "eval.jsonl")) == 5 * len(TASKS)
    assert summary["images"] == 600 == len(list((root / "images").glob("*.png")))
    assert summary["eval_per_task"] == {task: 5 for task in TASKS}
    meta = json.loads((root / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["tasks"] == list(TASKS) and len(TASKS) == 14


def test_deterministic_for_a_seed(built, tmp_path):
    root, _ = built
    again = tmp_path / "again"
    build_digits(again, seed=3, **SMALL)
    for name in ("train.jsonl", "eval.jsonl", "images.jsonl", "meta.json", "images/eval_00007.png"):
        assert (again / name).read_bytes() == (root / name).read_bytes(), name
    other = tmp_path / "other"
    build_digits(other, seed=4, **SMALL)
    assert (other / "eval.jsonl").read_bytes() != (root / "eval.jsonl").read_bytes()


def test_handwriting_samples_split_before_composition(built):
    from sklearn.datasets import load_digits

    root, _ = built
    labels = load_digits().target
    split = json.loads((root / "meta.json").read_text())["split_samples"]
    train, held_out = set(split["train"]), set(split["eval"])
    assert not train & held_out and len(train | held_out) == len(labels)
    for digit in range(10):  # stratified ~80/20
        held_out_share = sum(labels[i] == digit for i in held_out) / np.sum(labels == digit)
        assert 0.18 < held_out_share < 0.22
    for row in read_jsonl(root / "images.jsonl"):
        allowed = train if row["split"] == "train" else held_out
        assert set(row["samples"]) <= allowed
        assert row["image"].startswith(f"images/{row['split']}_")
        assert [labels[i] for i in row["samples"]] == row["digits"]


def test_images_are_16x64_grayscale(built):
    root, _ = built
    for path in (root / "images").glob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (64, 16)


def test_eval_positive_true_and_every_negative_false(built):
    root, _ = built
    digits = image_digits(root)
    for row in read_jsonl(root / "eval.jsonl"):
        query = text_or_digits(row["query"], digits)
        for index, candidate in enumerate(row["candidates"]):
            other = text_or_digits(candidate, digits)
            statement, seq = (query, other) if "text" in row["query"] else (other, query)
            assert statement.holds(seq) == (index == row["label"]), (row["task"], index)


def test_eval_candidates_many_distinct_and_label_varies(built):
    root, _ = built
    rows = read_jsonl(root / "eval.jsonl")
    for row in rows:
        keys = [json.dumps(c, sort_keys=True) for c in row["candidates"]]
        assert len(keys) >= 50 and len(set(keys)) == len(keys)
        assert row["instruction"] == INSTRUCTIONS[row["task"].split(".")[2]]
    assert len({row["label"] for row in rows}) > 20


def test_eval_has_hard_negatives(built):
    root, _ = built
    digits = image_digits(root)
    checked = set()  # the tasks whose branch below ran: a build without them must fail
    for row in read_jsonl(root / "eval.jsonl"):
        if row["task"] == "tier2.order.i2t":
            increasing, total = parse_statement(row["candidates"][row["label"]]["text"]).values
            texts = {c["text"] for c in row["candidates"]}
            flipped = Statement("order", (1 - increasing, total))
            assert flipped.text in texts  # one condition true, the other false
            checked.add(row["task"])
        if row["task"] == "tier1.read.t2i":
            positive = digits[row["candidates"][row["label"]]["image"]]
            shared = [len(set(digits[c["image"]]) & set(positive)) for c in row["candidates"]]
            assert sorted(shared)[-2] >= 1  # some negative shares a digit with the positive
            checked.add(row["task"])
    assert checked == {"tier2.order.i2t", "tier1.read.t2i"}


def test_i2t_same_family_negatives_share_the_template(built):
    root, _ = built
    checked = set()
    for row in read_jsonl(root / "eval.jsonl"):
        _, family, direction = row["task"].split(".")
        if direction == "i2t":
            families = Counter(parse_statement(c["text"]).family for c in row["candidates"])
            assert families[family] >= min(10, len(family_statements(family)))
            checked.add(row["task"])
    assert checked == {task for task in TASKS if task.endswith(".i2t")}


def test_train_rows_are_consistent(built):
    root, _ = built
    digits = image_digits(root)
    rows = read_jsonl(root / "train.jsonl")
    assert {row["task"] for row in rows} == set(TASKS)
    negative_kinds = set()
    for row in rows:
        direction = row["task"].split(".")[2]
        image_side = row["query"] if direction == "i2t" else row["target"]
        text_side = row["target"] if direction == "i2t" else row["query"]
        seq, statement = digits[image_side["image"]], parse_statement(text_side["text"])
        assert row["answer"] == text_side["text"] and statement.holds(seq)
        assert row["rationale"].startswith("digits " + " ".join(map(str, seq)))
        assert row["instruction"] == INSTRUCTIONS[direction]
        assert image_side["image"].startswith("images/train_")
        for negative in row["negatives"]:
            if "image" in negative:
                assert negative["image"].startswith("images/train_")
                assert not statement.holds(digits[negative["image"]])
                negative_kinds.add("image")
            else:
                assert not parse_statement(negative["text"]).holds(seq)
                negative_kinds.add("text")
    assert negative_kinds == {"image", "text"}  # both kinds of negative were checked


def test_loaders_accept_the_build(built):
    root, summary = built
    train = load_train(root)
    evals = load_eval(root)
    assert len(train) == summary["train_rows"] and len(evals) == summary["eval_rows"]
    assert {row.task for row in evals} == set(TASKS)
    assert all(len(row.candidates) == 50 for row in evals)


def test_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_digits(out, **SMALL)
    assert (out / "keep.txt").read_text() == "precious"
    assert data_main(["digits", str(out), "--train-images", "20"]) == 2
    assert "--overwrite" in capsys.readouterr().err  # the command line names its flag
    assert (out / "keep.txt").read_text() == "precious"
    build_digits(out, overwrite=True, **SMALL)
    assert not (out / "keep.txt").exists() and (out / "eval.jsonl").is_file()
    (tmp_path / "plain").mkdir()  # the build must not keep mkdtemp's private 0700 mode
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode
    (tmp_path / "plain").rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging left behind


def test_invalid_sizes_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        build_digits(tmp_path / "x", n_candidates=1)
    with pytest.raises(ValueError, match="n_eval_images"):
        build_digits(tmp_path / "y", n_train_images=20, n_eval_images=40, eval_per_task=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_reasoning_target_for_text_to_image_rows(built, tmp_path):
    """--t2i-answer reasoning: t2i rows reconstruct the positive image's digits and the derived
    quantity; i2t rows, every other field and the eval split are unchanged."""
    root, _ = built
    other = tmp_path / "reasoning"
    build_digits(other, seed=3, t2i_answer="reasoning", **SMALL)
    digits = image_digits(other)
    plain, reasoning = read_jsonl(root / "train.jsonl"), read_jsonl(other / "train.jsonl")
    assert len(plain) == len(reasoning)
    directions = set()
    for a, b in zip(plain, reasoning):
        assert {k: v for k, v in a.items() if k != "answer"} == {k: v for k, v in b.items() if k != "answer"}
        directions.add(b["task"].split(".")[2])
        if b["task"].endswith(".t2i"):
            seq = digits[b["target"]["image"]]
            assert b["answer"] == b["rationale"] != b["query"]["text"]
            assert b["answer"].startswith("digits " + " ".join(map(str, seq)))
        else:
            assert b["answer"] == a["answer"]
    assert directions == {"t2i", "i2t"}  # both branches above ran
    assert read_jsonl(root / "eval.jsonl") == read_jsonl(other / "eval.jsonl")
    assert json.loads((other / "meta.json").read_text())["t2i_answer"] == "reasoning"
    with pytest.raises(ValueError, match="t2i_answer"):
        build_digits(tmp_path / "bad", t2i_answer="image")
