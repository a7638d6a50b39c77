"""scripts/probes/probe_latents.py: its pure parts (splits, closed-form ridge, token accuracy) and one
end-to-end run on a tiny checkpoint."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probes" / "probe_latents.py"
spec = importlib.util.spec_from_file_location("probe_latents", SCRIPT)
probe_latents = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_latents)


def test_validation_split_is_disjoint_seeded_and_covers_the_rows():
    fit, val = probe_latents.split_indices(40, 0.25, seed=3)
    assert len(val) == 10 and not set(fit) & set(val) and sorted([*fit, *val]) == list(range(40))
    again = probe_latents.split_indices(40, 0.25, seed=3)
    assert np.array_equal(fit, again[0]) and np.array_equal(val, again[1])
    with pytest.raises(ValueError, match="val_fraction"):
        probe_latents.split_indices(40, 1.5, seed=0)


def test_ridge_probe_finds_a_linear_signal_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) * rng.uniform(0.1, 10, size=12)  # unequal scales
    y = np.round(x @ rng.normal(size=12) + 5)
    found = probe_latents.probe(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:])
    assert found["val_r2"] > 0.95 and found["test_r2"] > 0.95
    noise = rng.normal(size=300)
    none = probe_latents.probe(x[:200], noise[:200], x[200:250], noise[200:250])
    assert none["val_r2"] < 0.2
    # A huge ridge strength predicts the fit rows' mean.
    shrunk = probe_latents.ridge_fit(x[:200], y[:200], 1e12)
    assert np.allclose(probe_latents.ridge_predict(shrunk, x[200:]), y[:200].mean(), atol=1e-3)


def test_token_accuracy_ignores_padding():
    pad = 0
    targets = np.array([[5, 6, 7, pad], [8, 9, pad, pad]])
    predicted = np.array([[5, 6, 1, 3], [8, 9, 4, 4]])
    result = probe_latents.token_accuracy(predicted, targets, pad)
    assert result["token_acc"] == pytest.approx(100 * 4 / 5)
    assert result["answer_exact"] == 50.0 and result["rows"] == 2


def test_probe_script_runs_on_a_tiny_checkpoint(make_model, digits_dir, tmp_path, capsys):
    from lame.checkpoint import save_checkpoint

    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, make_model(), {}, {"stage": "joint", "step": 0, "done": True}, [])
    out = tmp_path / "probe.json"
    assert (
        probe_latents.main(
            ["--ckpt", str(ckpt), "--data", str(digits_dir), "--rows", "200", "--out", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    held = report["reconstruction"]["eval_queries_held_out"]
    assert 0.0 <= held["token_acc"] <= 100.0 and held["rows"] > 0
    by_direction = report["reconstruction"]
    assert by_direction["eval_i2t"]["rows"] + by_direction["eval_t2i"]["rows"] == held["rows"]
    sums = report["probes"]["sum"]
    assert {"reason", "embed", "input"} <= set(sums)
    assert report["probes"]["rows"]["validation"] > 0
    assert 0.0 <= sums["reason"]["val_acc"] <= 100.0
