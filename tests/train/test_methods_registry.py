"""The methods registry (lame.methods), generative pre-training (--method lm), --init-from a
checkpoint of another method, and the greedy-generation check (lame-eval --generate)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lame.cli.evaluate import main as eval_main
from lame.cli.train import main as train_main
from lame.config import LameConfig, load_preset
from lame.data.dataset import EvalRow, Item
from lame.evaluation.generation import case_for, exact_match, read_digits, score_generations
from lame.methods import METHODS, embedding_methods, get_method
from lame.training.train import copy_backbone
from lame_runtime.errors import CheckpointError


def test_registry_dispatches_every_method_and_names_them_on_an_unknown_one():
    assert set(METHODS) == {"lame", "discriminative", "cot", "latent", "lm"}
    for name in METHODS:
        assert get_method(name).name == name
    assert "lm" not in embedding_methods() and "lame" in embedding_methods()
    with pytest.raises(ValueError, match="method must be one of .*'lm'.*got 'coconut'"):
        get_method("coconut")
    model = dict(load_preset("tiny")["model"], method="coconut")
    with pytest.raises(ValueError, match="method must be one of"):
        LameConfig.from_dict(model)


def test_the_model_asks_its_method(make_model):
    latent = make_model(method="latent", bottleneck_mask=False, num_reason_tokens=2)
    lame = make_model()
    assert latent.method is get_method("latent") and lame.method is get_method("lame")
    feed = lame.feed_to_tensors(lame.preprocessor(["the largest digit is 7"], [None]))
    with torch.no_grad():
        assert latent(**feed).reason_states.shape[1] == 2  # K latent steps
        assert lame(**feed).reason_states.shape[1] == lame.config.num_reason_tokens


@pytest.fixture(scope="module")
def lm_ckpt(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "ckpt"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--method",
                "lm",
                "--max-steps",
                "10",
                "--batch-size",
                "16",
                "--save-every",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    return out


def test_lm_pretraining_lowers_its_next_token_loss(lm_ckpt):
    config = LameConfig.load(lm_ckpt / "config.json")
    assert config.method == "lm" and config.num_reason_tokens == 0 and not config.bottleneck_mask
    logs = [json.loads(line) for line in (lm_ckpt / "metrics.jsonl").read_text().splitlines()]
    # no frozen-backbone warm-up for a generative run (the method's stage plan)
    assert {m["stage"] for m in logs} == {"joint"}
    losses = [m for m in logs if "lm" in m]
    assert losses and all("contrastive" not in m for m in losses)
    assert losses[-1]["total"] == pytest.approx(losses[-1]["lm"])


def test_lm_loss_falls_over_steps(digits_dir, tmp_path):
    from lame.training.train import TrainConfig, train

    model = dict(load_preset("tiny")["model"], method="lm", num_reason_tokens=0, bottleneck_mask=False)
    out = tmp_path / "lm"
    train(
        digits_dir,
        out,
        LameConfig.from_dict(model),
        TrainConfig(
            stage="joint", max_steps=10, batch_size=16, lr=0.01, log_every=1, save_every=0, final_eval=False
        ),
        show_progress=False,
    )
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lm = [m["lm"] for m in logs if "lm" in m]
    assert len(lm) == 10
    assert sum(lm[-2:]) / 2 < 0.8 * sum(lm[:2]) / 2, lm


def test_init_from_an_lm_checkpoint_without_method_continues_it_jointly(
    lm_ckpt, digits_dir, tmp_path, capsys
):
    """The preset's default method is lame, the checkpoint's lm: --init-from alone continues
    the lm run, whose stage plan has no warm-up (which would freeze all it trains)."""
    out = tmp_path / "more-lm"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--init-from",
                str(lm_ckpt),
                "--max-steps",
                "2",
                "--batch-size",
                "8",
                "--no-final-eval",
                "--no-progress",
            ]
        )
        == 0
    )
    assert LameConfig.load(out / "config.json").method == "lm"
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {m["stage"] for m in logs} == {"joint"}
    before, after = load_file(lm_ckpt / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    code = train_main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(tmp_path / "w"),
            "--preset",
            "tiny",
            "--init-from",
            str(lm_ckpt),
            "--stage",
            "warmup",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no warm-up stage" in err and len(err.splitlines()) == 1, err


def test_init_from_an_lm_checkpoint_copies_its_backbone_into_lame(lm_ckpt, digits_dir, tmp_path):
    out = tmp_path / "lame"
    # warm-up freezes the backbone: after one step its tensors are still the lm run's exactly
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--init-from",
                str(lm_ckpt),
                "--method",
                "lame",
                "--stage",
                "warmup",
                "--max-steps",
                "1",
                "--batch-size",
                "8",
                "--no-final-eval",
                "--no-progress",
            ]
        )
        == 0
    )
    config = LameConfig.load(out / "config.json")
    assert config.method == "lame" and config.num_reason_tokens == 4 and config.bottleneck_mask
    source, target = load_file(lm_ckpt / "model.safetensors"), load_file(out / "model.safetensors")
    backbone = [k for k in source if k.startswith("backbone.")]
    assert backbone
    for key in backbone:
        assert torch.equal(source[key], target[key]), key
    assert target["reason_tokens"].shape[0] == 4
    lm_tokenizer = (lm_ckpt / "tokenizer.json").read_text()
    assert (out / "tokenizer.json").read_text() == lm_tokenizer


def test_copy_backbone_refuses_a_different_architecture(make_model, tiny_config):
    small = make_model()
    wider = make_model(backbone=replace(tiny_config.backbone, hidden_size=64, intermediate_size=96))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        copy_backbone(small, wider)


def test_generation_check_reports_exact_match(lm_ckpt, digits_dir, tmp_path, capsys):
    report = tmp_path / "gen.json"
    assert (
        eval_main(
            [
                "--ckpt",
                str(lm_ckpt),
                "--data",
                str(digits_dir),
                "--generate",
                "6",
                "--max-new-tokens",
                "12",
                "--out",
                str(report),
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads(report.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["checkpoint_method"] == "lm" and result["n"] == 6
    assert 0.0 <= result["exact_match"] <= 100.0
    assert set(result["per_direction"]) <= {"i2t", "t2i"} and result["per_direction"]
    assert sum(v["n"] for v in result["per_direction"].values()) == 6
    assert "digits_read" in result["per_direction"].get("i2t", {"digits_read": 0})
    assert all(isinstance(s["generated"], str) for s in result["samples"])
    assert eval_main(["--ckpt", str(lm_ckpt), "--data", str(digits_dir), "--generate", "0"]) != 0


def test_generation_scoring_and_references():
    i2t = EvalRow(
        Item(image="/x/a.png"),
        [Item(text="the largest digit is 9"), Item(text="the largest digit is 7")],
        label=1,
        task="tier1.max.i2t",
    )
    t2i = EvalRow(
        Item(text="the largest digit is 7"),
        [Item(image="/x/a.png"), Item(image="/x/b.png")],
        label=0,
        task="tier1.max.t2i",
    )
    assert case_for(i2t).reference == "the largest digit is 7" and case_for(i2t).direction == "i2t"
    assert case_for(t2i).reference == "the largest digit is 7" and case_for(t2i).direction == "t2i"
    text = "digits 3 7 1 2 . largest 7 . The largest  digit is 7"
    assert exact_match(text, "the largest digit is 7")
    assert exact_match("digits3712.largest7.thelargestdigitis7", "the largest digit is 7")
    assert exact_match("the largest digit is 7", "the largest digit is 7")
    assert not exact_match(text, "the largest digit is 9")
    assert not exact_match(text, "digit is 7")  # a suffix that is not the whole answer
    assert not exact_match("", "")
    assert read_digits(text) == (3, 7, 1, 2) and read_digits("largest 7") is None
    assert read_digits("digits3712.largest7") == (3, 7, 1, 2)
    known = {str(Path("/x/a.png").resolve()): (3, 7, 1, 2)}
    result = score_generations([i2t, t2i], [text, "digits 1 . the largest digit is 1"], known)
    assert result["exact_match"] == 50.0
    assert result["per_direction"]["i2t"] == {"n": 1, "exact_match": 100.0, "digits_read": 100.0}
    assert result["per_direction"]["t2i"]["exact_match"] == 0.0


def test_lm_refuses_gradcache_chunking_with_a_clear_error(digits_dir, tmp_path, capsys):
    code = train_main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(tmp_path / "x"),
            "--preset",
            "tiny",
            "--method",
            "lm",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--chunk-size",
            "4",
            "--no-progress",
        ]
    )
    assert code != 0
    assert "does not cover method 'lm'" in capsys.readouterr().err
