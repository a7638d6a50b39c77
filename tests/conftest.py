"""Shared fixtures: a small real digits dataset and tiny random-initialised models."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """A small build of the bundled benchmark (real sklearn digits), with its tokenizer."""
    from lame.cli.data import main

    out = tmp_path_factory.mktemp("data") / "digits"
    code = main(["digits", str(out), "--train-images", "160", "--eval-per-task", "3", "--vocab-size", "300"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_config():
    from lame.config import LameConfig, load_preset

    return LameConfig.from_dict(load_preset("tiny")["model"])


@pytest.fixture
def make_model(digits_dir, tiny_config):
    """Factory: a fresh tiny LaME model (seeded) with the dataset's tokenizer."""
    from dataclasses import replace

    from lame.model import LameModel
    from lame.tokenizer import preprocessor_for

    def factory(seed: int = 0, **overrides):
        torch.manual_seed(seed)
        config = replace(tiny_config, **overrides)
        config.validate()
        return LameModel(config, preprocessor_for(digits_dir, config)).eval()

    return factory


@pytest.fixture(scope="session")
def trained_ckpt(digits_dir, tmp_path_factory) -> Path:
    """Both stages of the tiny preset, trained in-process through the CLI."""
    from lame.cli.train import main

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    code = main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--max-steps",
            "8",
            "--batch-size",
            "8",
            "--no-progress",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def artifact_dir(trained_ckpt, digits_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint exported with fp32 + fp16 + int8 (gates recorded, not enforced:
    an 8-step model's rankings are near-ties, so its hit@1 moves on noise)."""
    from lame_export.pipeline import ExportOptions, export_checkpoint

    out = tmp_path_factory.mktemp("artifact") / "tiny"
    export_checkpoint(
        trained_ckpt,
        out,
        ExportOptions(fp16=True, int8=True, calib_data=str(digits_dir), calib_size=32, force=True),
    )
    return out
