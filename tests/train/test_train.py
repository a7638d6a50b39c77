"""Both stages in-process through lame-train's main(argv); freezing, checkpoints, resume."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import train_killed_at
from train_helpers import weights as _weights

import lame
from lame.checkpoint import CheckpointError
from lame.cli.evaluate import main as eval_main
from lame.cli.train import main as train_main
from lame.data.batching import Collator, batch_indices
from lame.data.dataset import load_train
from lame.training.objective import compute_losses
from lame.training.train import TrainConfig, set_trainable, train

CONTRACT = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "preprocessor_config.json",
    "trainer_state.json",
    "trainer_state.safetensors",
    "meta.json",
    "metrics.jsonl",
    "train_config.json",
    "training_curves.png",
)


def test_checkpoint_contract(trained_ckpt):
    for name in CONTRACT:
        assert (trained_ckpt / name).is_file(), name
    config = json.loads((trained_ckpt / "config.json").read_text())
    weights = load_file(str(trained_ckpt / "model.safetensors"))
    hidden = config["backbone"]["hidden_size"]
    assert weights["reason_tokens"].shape == (config["num_reason_tokens"], hidden)
    meta = json.loads((trained_ckpt / "meta.json").read_text())
    assert meta["done"] and meta["step"] == 8 and meta["stage"] == "joint"
    stages = {json.loads(line)["stage"] for line in (trained_ckpt / "metrics.jsonl").open()}
    assert {"warmup", "joint", "final"} <= stages
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(trained_ckpt / "tokenizer.json")).token_to_id("[EMBED]") is not None


def test_load_and_encode(trained_ckpt, digits_dir):
    model = lame.load(trained_ckpt)
    image = str(next((digits_dir / "images").glob("*.png")))
    for kwargs in (
        {"texts": ["the digits add up to 9"]},
        {"images": [image]},
        {"texts": ["find it"], "images": [image]},
    ):
        vectors = model.encode(**kwargs)
        assert vectors.dtype == np.float32 and vectors.shape == (1, model.config.embed_dim)
        assert abs(np.linalg.norm(vectors[0]) - 1) < 1e-5


def test_warmup_freezes_backbone_and_trains_latents(make_model, digits_dir):
    model = make_model()
    params = set_trainable(model, "warmup")
    rows = load_train(digits_dir)[:8]
    batch = Collator(model.preprocessor, model.config.max_answer_tokens, 1)(rows)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    compute_losses(model, batch)["total"].backward()
    for name, param in model.backbone.named_parameters():
        assert param.grad is None, f"frozen {name} got a gradient"
    assert model.reason_tokens.grad is not None and model.reason_tokens.grad.abs().sum() > 0
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed != name.startswith("backbone."), name
    assert set_trainable(model, "joint") == list(model.parameters())


def test_losses_are_all_present_and_finite(make_model, digits_dir):
    model = make_model().train()
    batch = Collator(model.preprocessor, model.config.max_answer_tokens, 1)(load_train(digits_dir)[:8])
    losses = compute_losses(model, batch)
    assert set(losses) == {"contrastive", "reconstruction", "diversity", "total"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_batches_depend_only_on_seed_and_step():
    a = batch_indices(100, 8, seed=3, step=17)
    assert np.array_equal(a, batch_indices(100, 8, seed=3, step=17))
    assert not np.array_equal(a, batch_indices(100, 8, seed=4, step=17))
    epoch = np.concatenate([batch_indices(100, 10, 0, s) for s in range(10)])
    assert sorted(epoch.tolist()) == list(range(100))


def test_resume_after_kill_matches_uninterrupted_run(digits_dir, tmp_path, tiny_config, monkeypatch):
    cfg = TrainConfig(max_steps=10, batch_size=8, save_every=3, eval_every=0, seed=1)
    train(digits_dir, tmp_path / "straight", tiny_config, cfg, show_progress=False)
    train_killed_at(7, digits_dir, tmp_path / "killed", tiny_config, cfg, monkeypatch)
    assert json.loads((tmp_path / "killed" / "meta.json").read_text())["step"] == 6
    train(digits_dir, tmp_path / "killed", tiny_config, cfg, resume=True, show_progress=False)

    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


def test_joint_stage_from_warmup_checkpoint(digits_dir, tmp_path):
    warm = tmp_path / "warm"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(warm),
                "--preset",
                "tiny",
                "--stage",
                "warmup",
                "--max-steps",
                "3",
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    joint = tmp_path / "joint"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(joint),
                "--preset",
                "tiny",
                "--stage",
                "joint",
                "--init-from",
                str(warm),
                "--max-steps",
                "3",
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    w, j = _weights(warm), _weights(joint)
    backbone = [n for n in w if n.startswith("backbone.")]
    assert all(not torch.equal(w[n], j[n]) for n in ("reason_tokens", backbone[0]))


def test_discriminative_run_via_cli(digits_dir, tmp_path, capsys):
    out = tmp_path / "k0"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--reason-tokens",
                "0",
                "--max-steps",
                "3",
                "--batch-size",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= printed["hit@1"] <= 100
    assert _weights(out)["reason_tokens"].shape[0] == 0


def test_existing_checkpoint_is_not_overwritten(trained_ckpt, digits_dir, capsys):
    code = train_main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(trained_ckpt),
            "--preset",
            "tiny",
            "--max-steps",
            "2",
            "--no-progress",
        ]
    )
    assert code == 2
    assert "--resume" in capsys.readouterr().err


def test_eval_cli_prints_metrics(trained_ckpt, digits_dir, capsys):
    assert eval_main(["--ckpt", str(trained_ckpt), "--data", str(digits_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"hit@1", "ndcg@5", "ndcg@10", "per_task", "per_group"} <= set(result)
    assert "tier2.oddsum.i2t" in result["per_task"]


def test_corrupt_and_incomplete_checkpoints(trained_ckpt, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_ckpt, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        lame.load(broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="missing tokenizer.json"):
        lame.load(broken)
    assert eval_main(["--ckpt", str(tmp_path / "absent"), "--data", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_bad_options_give_one_line_errors(digits_dir, tmp_path, capsys):
    code = train_main(
        [
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o"),
            "--preset",
            "tiny",
            "--no-progress",
        ]
    )
    assert code == 2 and "missing" in capsys.readouterr().err
    code = train_main(["--data", str(digits_dir), "--out", str(tmp_path / "o"), "--preset", "nonexistent"])
    assert code == 2 and "unknown preset" in capsys.readouterr().err


def test_out_dir_with_foreign_files_is_never_replaced(digits_dir, tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("do not delete")
    code = train_main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(precious),
            "--preset",
            "tiny",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--no-progress",
        ]
    )
    assert code == 2 and "not a LaME output" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "do not delete"


def test_new_parameters_can_learn_faster_than_the_pretrained_backbone(make_model):
    from lame.training.train import _optimizer

    model = make_model()
    params = set_trainable(model, "joint")
    optimizer = _optimizer(model, params, TrainConfig(lr=1e-4, new_lr_scale=10.0))
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert len(scale_of) == len(params)  # every trainable parameter in exactly one group
    assert all(scale_of[id(p)] == 1.0 for p in model.backbone.parameters())
    for new in (model.reason_tokens, model.embed_head.proj.weight, next(model.decoder_head.parameters())):
        assert scale_of[id(new)] == 10.0
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.reason_tokens) not in decay and id(model.embed_head.proj.weight) in decay
