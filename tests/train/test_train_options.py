"""lame-train's options for bigger runs, checked on the CPU with tiny models: device selection,
bf16 autocast, gradient checkpointing, GradCache chunking, LoRA (merged checkpoints that
export), a real backbone directory with its own tokenizer, the image resolution, evaluation
limits."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import train_killed_at
from train_helpers import weights as _weights

from lame.cli.evaluate import main as eval_main
from lame.cli.train import main as train_main
from lame.data.batching import Collator, batch_indices
from lame.data.dataset import load_eval, load_train
from lame.training.objective import compute_losses
from lame.training.train import TrainConfig, train

# Gradients of a recomputed / chunked pass: the same float ops in another summation order.
GRAD_ATOL, GRAD_RTOL = 2e-6, 1e-4


def _batch(model, digits_dir, rows=8, hard_negatives=1, step=0):
    data = load_train(digits_dir)
    picked = [data[i] for i in batch_indices(len(data), rows, 0, step)]
    collate = Collator(model.preprocessor, model.config.max_answer_tokens, hard_negatives)
    return collate(picked)


def _losses_and_grads(model, backward):
    model.zero_grad(set_to_none=True)
    losses = backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in losses.items()}, grads


def _assert_same(reference, other):
    ref_losses, ref_grads = reference
    losses, grads = other
    assert losses.keys() == ref_losses.keys()
    for key, value in ref_losses.items():
        assert losses[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        assert torch.allclose(grads[name], grad, atol=GRAD_ATOL, rtol=GRAD_RTOL), name


def _full_backward(model, batch):
    def run():
        losses = compute_losses(model, batch)
        losses["total"].backward()
        return losses

    return run


# ----------------------------------------------------------------------------- precision --


def test_bf16_autocast_trains_two_steps_with_float32_master_weights(digits_dir, tmp_path, tiny_config):
    cfg = TrainConfig(
        max_steps=2,
        batch_size=8,
        eval_every=0,
        save_every=0,
        precision="bf16",
        final_eval=False,
        stage="joint",
    )
    train(digits_dir, tmp_path / "bf16", tiny_config, cfg, show_progress=False, device="cpu")
    weights = _weights(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    logged = [m for m in map(json.loads, (tmp_path / "bf16" / "metrics.jsonl").open()) if "total" in m]
    assert logged and all(np.isfinite(m["total"]) for m in logged)


def test_bf16_autocast_really_computes_in_bfloat16(make_model, digits_dir):
    from lame.device import autocast

    model = make_model().train()
    batch = _batch(model, digits_dir)
    seen = []
    hook = model.backbone.text_model.layers[0].mlp.down_proj.register_forward_hook(
        lambda module, args, out: seen.append(out.dtype)
    )
    with autocast(torch.device("cpu"), "bf16"):
        compute_losses(model, batch)
    hook.remove()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)


def test_resumed_bf16_run_equals_uninterrupted_run(digits_dir, tmp_path, tiny_config, monkeypatch):
    cfg = TrainConfig(
        max_steps=6, batch_size=8, save_every=2, eval_every=0, seed=3, precision="bf16", final_eval=False
    )
    _assert_kill_and_resume_is_exact(digits_dir, tmp_path, tiny_config, cfg, monkeypatch)


# ------------------------------------------------------------------------------ devices --


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_one_line_error(digits_dir, tmp_path, capsys, spec):
    code = train_main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(tmp_path / "x"),
            "--preset",
            "tiny",
            "--device",
            spec,
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("lame-train: error:"), err
    assert "no CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_load_and_eval_on_cuda_without_cuda(trained_ckpt, digits_dir, capsys):
    import lame
    from lame_runtime.errors import BackendError

    with pytest.raises(BackendError, match="no CUDA device"):
        lame.load(trained_ckpt, device="cuda")
    code = eval_main(["--ckpt", str(trained_ckpt), "--data", str(digits_dir), "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("lame-eval: error:"), err


def test_device_resolution():
    from lame.device import resolve_device
    from lame_runtime.errors import InputError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


# ------------------------------------------------------------------ gradient checkpointing --


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(make_model, digits_dir):
    plain = make_model().train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.backbone.enable_gradient_checkpointing()
    batch = _batch(plain, digits_dir)
    reference = _losses_and_grads(plain, _full_backward(plain, batch))

    # Recomputation really happens: the first LM layer and the vision block run again in backward.
    # (Counted by wrapping ``forward``: forward hooks do not fire on recomputation.)
    calls = {"lm": 0, "vision": 0}
    for key, module in (
        ("lm", checkpointed.backbone.text_model.layers[0].mlp),
        ("vision", checkpointed.backbone.model.visual.blocks[0].mlp),
    ):

        def counted(*args, _forward=module.forward, _key=key, **kwargs):
            calls[_key] += 1
            return _forward(*args, **kwargs)

        module.forward = counted
    losses = compute_losses(checkpointed, batch)
    forward_calls = dict(calls)
    checkpointed.zero_grad(set_to_none=True)
    losses["total"].backward()
    assert calls["lm"] > forward_calls["lm"] and calls["vision"] > forward_calls["vision"]
    _assert_same(reference, _losses_and_grads(checkpointed, _full_backward(checkpointed, batch)))


# -------------------------------------------------------------------------- GradCache --


@pytest.mark.parametrize("method", ["lame", "discriminative"])
def test_chunked_contrastive_batch_equals_the_full_batch(make_model, digits_dir, method):
    from lame.training.gradcache import chunked_backward

    overrides = (
        {} if method == "lame" else dict(method="discriminative", num_reason_tokens=0, bottleneck_mask=False)
    )
    model = make_model(**overrides).train()
    batch = _batch(model, digits_dir, rows=8, hard_negatives=1)
    assert "negatives" in batch
    reference = _losses_and_grads(model, _full_backward(model, batch))
    expected_terms = {
        "lame": {"contrastive", "reconstruction", "diversity", "total"},
        "discriminative": {"contrastive", "total"},
    }[method]
    assert set(reference[0]) == expected_terms
    for chunk in (3, 1):  # uneven chunks (3+3+2), and one row at a time
        chunked = _losses_and_grads(model, lambda: chunked_backward(model, batch, chunk))
        _assert_same(reference, chunked)


def test_chunked_training_run_matches_unchunked_run(digits_dir, tmp_path, tiny_config):
    base = dict(
        max_steps=2, batch_size=8, eval_every=0, save_every=0, final_eval=False, stage="joint", seed=4
    )
    train(digits_dir, tmp_path / "full", tiny_config, TrainConfig(**base), show_progress=False)
    train(
        digits_dir, tmp_path / "chunked", tiny_config, TrainConfig(**base, chunk_size=3), show_progress=False
    )
    full, chunked = _weights(tmp_path / "full"), _weights(tmp_path / "chunked")
    worst = max(float((full[k] - chunked[k]).abs().max()) for k in full)
    assert worst < 1e-4, worst  # Adam: float noise of ~0 gradients moves by far less than lr


# -------------------------------------------------------------------------------- LoRA --


def test_lora_trains_only_adapters_latents_and_heads_and_exports(trained_ckpt, digits_dir, tmp_path):
    from lame_export.pipeline import ExportOptions, export_checkpoint

    out = tmp_path / "lora"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(out),
                "--init-from",
                str(trained_ckpt),
                "--stage",
                "joint",
                "--max-steps",
                "2",
                "--batch-size",
                "8",
                "--lora-rank",
                "4",
                "--precision",
                "bf16",
                "--grad-checkpointing",
                "--no-final-eval",
                "--no-progress",
            ]
        )
        == 0
    )
    before, after = _weights(trained_ckpt), _weights(out)
    assert before.keys() == after.keys()  # merged: plain names, no adapter tensors
    adapted = [
        k for k in before if k.endswith(("q_proj.weight", "v_proj.weight")) and ".language_model." in k
    ]
    assert adapted
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert set(adapted) <= changed  # W + B A: the merged adapters moved the weights
    assert {"reason_tokens", "summary_tokens"} <= changed
    assert any(k.startswith("embed_head.") for k in changed)
    assert any(k.startswith("decoder_head.") for k in changed)
    frozen = [k for k in before if k.startswith("backbone.") and k not in adapted]
    assert frozen and not changed & set(frozen)  # vision tower and the rest of the LM

    state = load_file(str(out / "trainer_state.safetensors"))
    assert any(".lora_A." in k for k in state) and any(".base_layer." in k for k in state)

    report = export_checkpoint(out, tmp_path / "artifact", ExportOptions(force=True))
    assert report["fp32"]["min_cosine"] >= 0.9999


def test_resumed_lora_run_equals_uninterrupted_run(digits_dir, tmp_path, tiny_config, monkeypatch):
    cfg = TrainConfig(
        max_steps=6,
        batch_size=8,
        save_every=2,
        eval_every=0,
        seed=2,
        lora_rank=2,
        lora_targets=["q_proj", "k_proj", "v_proj"],
        final_eval=False,
    )
    _assert_kill_and_resume_is_exact(digits_dir, tmp_path, tiny_config, cfg, monkeypatch)


def test_lora_rejects_unknown_targets(digits_dir, tmp_path, capsys):
    code = train_main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(tmp_path / "x"),
            "--preset",
            "tiny",
            "--lora-rank",
            "2",
            "--lora-targets",
            "query_key",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "query_key" in err and "q_proj" in err


# ------------------------------------------------------------- backbone directory, size --


def _word_tokenizer(digits_dir):
    """A real WordLevel tokenizer over the dataset's words, without LaME's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lame.data.dataset import iter_texts

    words = sorted({w for text in iter_texts(digits_dir) for w in text.lower().split()})
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


@pytest.fixture(scope="module")
def backbone_dir(digits_dir, tmp_path_factory, tiny_config):
    """A saved tiny Qwen2-VL with its own tokenizer and image processor config."""
    from transformers import Qwen2VLModel

    from lame.backbones.qwen2_vl import tiny_qwen2_vl_config

    directory = tmp_path_factory.mktemp("backbone") / "tiny-qwen2-vl"
    tokenizer = _word_tokenizer(digits_dir)
    torch.manual_seed(0)
    model = Qwen2VLModel(tiny_qwen2_vl_config(tiny_config, tokenizer.get_vocab_size(), 0))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "patch_size": 8,
                "merge_size": 2,
                "temporal_patch_size": 2,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
            }
        )
    )
    return directory


def test_backbone_path_uses_its_tokenizer_and_image_size_end_to_end(
    backbone_dir, digits_dir, tmp_path, tiny_config
):
    from tokenizers import Tokenizer

    from lame_export.pipeline import ExportOptions, export_checkpoint
    from lame_runtime import Embedder
    from lame_runtime.inputs.text import SPECIAL_TOKENS

    ckpt = tmp_path / "ckpt"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(ckpt),
                "--preset",
                "tiny",
                "--backbone-path",
                str(backbone_dir),
                "--image-size",
                "32x64",
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
    own = Tokenizer.from_file(str(backbone_dir / "tokenizer.json"))
    saved = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    base_vocab = own.get_vocab(with_added_tokens=True)
    saved_vocab = saved.get_vocab(with_added_tokens=True)
    assert {k: saved_vocab[k] for k in base_vocab} == base_vocab  # same ids for its tokens
    assert set(saved_vocab) - set(base_vocab) == set(SPECIAL_TOKENS.values())
    assert min(saved_vocab[t] for t in SPECIAL_TOKENS.values()) >= len(base_vocab)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["image"]["std"] == [0.25, 0.25, 0.25]  # from the image processor
    assert config["backbone"]["hf_config"]["model_type"] == "qwen2_vl"

    # Export and serve without the backbone directory (the checkpoint holds the architecture).
    moved = backbone_dir.with_name("moved-away")
    backbone_dir.rename(moved)
    try:
        report = export_checkpoint(ckpt, tmp_path / "artifact", ExportOptions(force=True))
    finally:
        moved.rename(backbone_dir)
    assert report["fp32"]["min_cosine"] >= 0.9999
    embedder = Embedder(tmp_path / "artifact", backend="onnxruntime")
    image = np.random.default_rng(0).integers(0, 256, (40, 90, 3), dtype=np.uint8)
    feed = embedder.preprocessor(["a query"], [image])
    visual = int((feed["input_ids"] == embedder.preprocessor.text.special["image"]).sum())
    # (32/8 * 64/8) patches / 2x2 merge = 8 visual tokens; the preset's 16x64 gives 4.
    assert tiny_config.image.num_tokens == 4 and visual == 8
    assert feed["pixel_values"].shape[1] == 32
    vector = embedder.encode(texts=["a query"], images=[image])
    assert vector.shape == (1, config["embed_dim"]) and np.isfinite(vector).all()


def test_image_sizes_the_family_cannot_take_are_refused(digits_dir, tmp_path, capsys):
    for preset, size, message in (
        ("tiny-idefics3", "32x64", "square"),
        ("tiny", "30x64", "not divisible by patch_size x merge_size"),
    ):
        code = train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(tmp_path / "x"),
                "--preset",
                preset,
                "--image-size",
                size,
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_backbone_path_of_another_family_is_refused(backbone_dir, digits_dir, tmp_path, capsys):
    code = train_main(
        [
            "--data",
            str(digits_dir),
            "--out",
            str(tmp_path / "x"),
            "--preset",
            "tiny-idefics3",
            "--backbone-path",
            str(backbone_dir),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "qwen2_vl" in err and "idefics3" in err


# -------------------------------------------------------------------------- evaluation --


def test_eval_limit_spreads_rows_over_tasks(digits_dir):
    from lame.evaluation.evaluate import limit_rows

    rows = load_eval(digits_dir)
    tasks = {r.task for r in rows}
    picked = limit_rows(rows, len(tasks))
    assert len(picked) == len(tasks) and {r.task for r in picked} == tasks
    assert limit_rows(rows, None) == rows


def test_lame_eval_limit_and_no_final_eval(trained_ckpt, digits_dir, tmp_path, capsys):
    assert (
        eval_main(
            [
                "--ckpt",
                str(trained_ckpt),
                "--data",
                str(digits_dir),
                "--limit",
                "5",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["n"] == 5
    out = tmp_path / "nofinal"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(out),
                "--preset",
                "tiny",
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
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "hit@1" not in printed
    meta = json.loads((out / "meta.json").read_text())
    assert meta["done"] and "eval" not in meta


def _assert_kill_and_resume_is_exact(digits_dir, tmp_path, tiny_config, cfg, monkeypatch):
    """Train straight; train again killed at step 5 and --resume it: the weights must be
    bit-identical."""
    train(digits_dir, tmp_path / "straight", tiny_config, cfg, show_progress=False)
    train_killed_at(5, digits_dir, tmp_path / "killed", tiny_config, cfg, monkeypatch)
    train(digits_dir, tmp_path / "killed", tiny_config, cfg, resume=True, show_progress=False)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
