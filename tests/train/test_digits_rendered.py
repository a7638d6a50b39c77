"""The perception-solved digits variant (``--glyphs rendered``: jittered renders of fonts that
ship in matplotlib) and the validation split (``--val-per-task``), built for real and read back
by the loaders, the trainer and the evaluator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lame.data.dataset import load_eval, load_train
from lame.data.digits import TASKS, build_digits
from lame.data.glyphs import RENDER_FONTS, font_dir, rendered_glyphs
from lame.data.statements import parse_statement

SMALL = dict(n_train_images=200, n_eval_images=400, eval_per_task=3)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rendered") / "ds"
    build_digits(out, seed=1, glyphs="rendered", val_per_task=2, n_val_images=300, **SMALL)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_glyphs_are_jittered_renders_of_every_font():
    glyphs, labels = rendered_glyphs(np.random.default_rng(0), per_digit=14)
    assert glyphs.shape == (140, 16, 16) and glyphs.dtype == np.uint8
    assert np.bincount(labels).tolist() == [14] * 10
    # Ink in every render, no two renders of a digit identical (jitter, not a lookup table).
    assert (glyphs.reshape(140, -1).max(axis=1) >= 100).all()
    for digit in range(10):
        same = glyphs[labels == digit].reshape(14, -1)
        assert len({row.tobytes() for row in same}) == 14
    # A digit's renders are closer to each other than to another digit's, on average
    # (what "readable" means at the pixel level; a blank or shuffled render fails it).
    flat = glyphs.reshape(140, -1).astype(float)
    means = np.stack([flat[labels == d].mean(axis=0) for d in range(10)])
    nearest = np.argmin(((flat[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.6


def test_meta_records_the_fonts_that_drew_it(rendered):
    meta = json.loads((rendered / "meta.json").read_text())
    assert meta["glyphs"] == "rendered"
    assert [f["file"] for f in meta["fonts"]] == list(RENDER_FONTS)
    first = meta["fonts"][0]
    assert first["sha256"] == hashlib.sha256((font_dir() / first["file"]).read_bytes()).hexdigest()


def test_same_tasks_tiers_and_format(rendered):
    train, rows = load_train(rendered), load_eval(rendered)
    assert {r.task for r in rows} == set(TASKS) and len(rows) == 3 * len(TASKS)
    assert {r.task for r in train} <= set(TASKS)
    index = {row["image"]: row for row in read_jsonl(rendered / "images.jsonl")}
    for row in rows:  # the positive is true of the query image (or the text of the positive)
        image = row.query.image or row.candidates[row.label].image
        digits = index[str(Path(image).relative_to(rendered))]["digits"]
        text = row.query.text or row.candidates[row.label].text
        assert parse_statement(text).holds(tuple(digits))
    with Image.open(rendered / "images" / "eval_00000.png") as image:
        assert image.mode == "L" and image.size == (64, 16)


def test_renders_split_before_composition_and_val_uses_training_renders(rendered):
    meta = json.loads((rendered / "meta.json").read_text())
    train, held_out = set(meta["split_samples"]["train"]), set(meta["split_samples"]["eval"])
    assert not train & held_out
    by_split: dict[str, set] = {}
    for row in read_jsonl(rendered / "images.jsonl"):
        allowed = held_out if row["split"] == "eval" else train
        assert set(row["samples"]) <= allowed
        by_split.setdefault(row["split"], set()).add(row["image"])
    assert set(by_split) == {"train", "eval", "val"}
    # Validation images are not trained on and are not eval images.
    trained = {r["query"].get("image") for r in read_jsonl(rendered / "train.jsonl")}
    trained |= {r["target"].get("image") for r in read_jsonl(rendered / "train.jsonl")}
    assert not by_split["val"] & trained
    val = load_eval(rendered, split="val")
    assert len(val) == 2 * len(TASKS)
    for row in val:
        for item in [row.query, *row.candidates]:
            if item.image:
                assert Path(item.image).name.startswith("val_")


def test_val_split_leaves_train_and_eval_unchanged(tmp_path):
    build_digits(tmp_path / "plain", seed=2, **SMALL)
    build_digits(tmp_path / "with_val", seed=2, val_per_task=2, n_val_images=300, **SMALL)
    for name in ("train.jsonl", "eval.jsonl", "images/train_00005.png", "images/eval_00009.png"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "with_val" / name).read_bytes(), name
    from lame.data.dataset import DatasetError

    with pytest.raises(DatasetError, match="no val.jsonl"):
        load_eval(tmp_path / "plain", split="val")


def test_cli_builds_a_dataset_the_cli_trains_and_evaluates_on(tmp_path, capsys):
    from lame.cli.data import main as data_main
    from lame.cli.evaluate import main as eval_main
    from lame.cli.train import main as train_main

    data = tmp_path / "digits-rendered"
    assert (
        data_main(
            [
                "digits",
                str(data),
                "--glyphs",
                "rendered",
                "--train-images",
                "120",
                "--eval-per-task",
                "2",
                "--val-per-task",
                "2",
                "--vocab-size",
                "300",
            ]
        )
        == 0
    )
    ckpt = tmp_path / "ckpt"
    assert (
        train_main(
            [
                "--data",
                str(data),
                "--out",
                str(ckpt),
                "--preset",
                "tiny",
                "--max-steps",
                "4",
                "--batch-size",
                "8",
                "--no-progress",
                "--no-final-eval",
            ]
        )
        == 0
    )
    capsys.readouterr()
    for split in ("eval", "val"):
        assert eval_main(["--ckpt", str(ckpt), "--data", str(data), "--split", split, "--no-progress"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["n"] == 2 * len(TASKS)
    assert data_main(["digits", str(tmp_path / "x"), "--glyphs", "typed"]) != 0


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="glyphs must be one of"):
        build_digits(tmp_path / "a", glyphs="typed", **SMALL)
    with pytest.raises(ValueError, match="val_per_task"):
        build_digits(tmp_path / "b", val_per_task=-1, **SMALL)
    with pytest.raises(ValueError, match="split must be one of"):
        load_eval(tmp_path, split="test")
