"""Every backbone family's tiny preset trains both stages and exports with fp32 parity."""

import json

import pytest

from lame.cli.train import main as train_main
from lame_export.cli import main as export_main


@pytest.mark.parametrize("preset", ["tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-idefics3"])
def test_trains_both_stages_and_exports_with_parity(preset, digits_dir, tmp_path):
    ckpt, art = tmp_path / "ckpt", tmp_path / "art"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(ckpt),
                "--preset",
                preset,
                "--max-steps",
                "2",
                "--warmup-fraction",
                "0.5",
                "--batch-size",
                "8",
                "--eval-every",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    stages = {json.loads(line)["stage"] for line in (ckpt / "metrics.jsonl").open()}
    assert {"warmup", "joint"} <= stages
    assert export_main(["--ckpt", str(ckpt), "--out", str(art)]) == 0
    report = json.loads((art / "parity.json").read_text())
    assert report["fp32"]["min_cosine"] >= 0.9999, report["fp32"]
    assert report["tensorrt_lint"]["ok"], report["tensorrt_lint"]
