"""scripts/device/device_decoder.sh, the GPU comparison of latent decoders, as its CPU smoke:
the tiny preset, a tiny random Qwen3 decoder, one seed of each arm, the JSON and the docs'
table data files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_trains_every_arm_and_writes_the_table(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "PRESET": "tiny",
        "DEVICE": "cpu",
        "OUT": str(out),
        "WORK": str(work),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    script = ROOT / "scripts" / "device" / "device_decoder.sh"
    done = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    compare = json.loads((out / "decoder_compare.json").read_text())
    assert set(compare["runs"]) == {"lame", "lame-smollm2", "discriminative"}
    for arm, seeds in compare["runs"].items():
        assert set(seeds) == {"seed0"}, arm
        assert 0 <= seeds["seed0"]["eval"]["hit@1"] <= 100
    decoder_run = work / "runs" / "lame-smollm2" / "seed0"
    config = json.loads((decoder_run / "config.json").read_text())
    assert config["latent_decoder"]["model_type"] == "qwen3"
    assert compare["runs"]["lame-smollm2"]["seed0"]["last_logged"]["reconstruction"] > 0
    with (out / "decoder_lame_small.csv").open() as handle:
        rows = [r for r in csv.reader(handle) if r and not r[0].startswith("#")]
    assert len(rows) == 1 + 3  # header, one row per arm
    assert (out / "decoder_lame_small_diff.csv").is_file()
    assert "lame-smollm2" in (out / "decoder_table.md").read_text()
