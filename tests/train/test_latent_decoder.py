"""A pretrained causal LM as the latent decoder (``--latent-decoder DIR``), with a tiny random
Qwen3 made in code: teacher forcing on the LM's own tokens, both stages through the CLI, the
checkpoint without the LM's weights (loads, evaluates and exports without its directory),
bad directories refused before anything is written, the decoder-rows budget knob, GradCache."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from lame.checkpoint import load_model
from lame.cli.train import main as train_main
from lame.data.batching import Collator, batch_indices
from lame.data.dataset import load_train
from lame.decoders.lm import IGNORE, STATE_FILE, LmDecoderHead, attach, check_decoder_dir
from lame.training.objective import compute_losses
from lame_runtime.errors import InputError

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from lame.decoders.directories import write_tiny

    return write_tiny(tmp_path_factory.mktemp("decoder") / "tiny-qwen3")


def _with_decoder(make_model, path, mode="frozen", **overrides):
    model = make_model(latent_decoder={"path": str(path), "mode": mode}, **overrides)
    attach(model)
    return model.train()


def _batch(model, digits_dir, rows=8, decoder_rows=None):
    data = load_train(digits_dir)
    picked = [data[i] for i in batch_indices(len(data), rows, 0, 0)]
    head = model.decoder_head
    collate = Collator(
        model.preprocessor,
        model.config.max_answer_tokens,
        1,
        decoder_rows=decoder_rows,
        answer_encoder=getattr(head, "encode_answers", None),
        answer_ignore=head.ignore_index,
    )
    return collate(picked)


def test_answer_is_teacher_forced_in_the_decoders_own_tokens(make_model, tiny_lm):
    model = _with_decoder(make_model, tiny_lm)
    head = model.decoder_head
    assert isinstance(head, LmDecoderHead)
    inputs, targets = head.encode_answers(["12", "7"], max_tokens=24)
    eos = head.eos
    ids = [head.tokenizer.token_to_id(c) for c in "127"]
    assert targets.tolist() == [[ids[0], ids[1], eos], [ids[2], eos, IGNORE]]
    assert inputs[:, :2].tolist() == [[ids[0], ids[1]], [ids[2], eos]]
    # Position j predicts target j from the K states and inputs[:j] only (causal prefix):
    # changing input j leaves logits 0..j as they were.
    states = torch.randn(2, model.config.num_reason_tokens, model.backbone.hidden_size)
    with torch.no_grad():
        before = head(states, inputs)
        changed = inputs.clone()
        changed[:, 1] = ids[2]
        after = head(states, changed)
    assert torch.allclose(before[:, :2], after[:, :2], atol=1e-6)
    assert not torch.allclose(before[:, 2], after[:, 2])


def test_loss_reaches_the_reason_states_and_modes_set_what_trains(make_model, tiny_lm, digits_dir):
    model = _with_decoder(make_model, tiny_lm)
    batch = _batch(model, digits_dir)
    losses = compute_losses(model, batch)
    value = losses["reconstruction"].detach()
    assert torch.isfinite(value) and float(value) > 0
    losses["total"].backward()
    head = model.decoder_head
    assert head.proj.weight.grad is not None and head.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.lm.parameters())  # frozen
    assert model.reason_tokens.grad.abs().sum() > 0
    lora = _with_decoder(make_model, tiny_lm, mode="lora").decoder_head
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("proj.") or ".lora_" in n for n in trainable)
    assert any(".lora_" in n for n in trainable)
    assert set(lora.trained_state()) == trainable  # what a checkpoint keeps: not the LM itself
    full = _with_decoder(make_model, tiny_lm, mode="full").decoder_head
    assert all(p.requires_grad for p in full.parameters())


def test_decoder_rows_limit_the_reconstruction_to_those_rows(make_model, tiny_lm, digits_dir):
    model = _with_decoder(make_model, tiny_lm)
    batch = _batch(model, digits_dir, rows=8, decoder_rows=3)
    assert (batch["decoder_target"][3:] == IGNORE).all()
    assert (batch["decoder_target"][:3] != IGNORE).any(1).all()
    with torch.no_grad():
        out = model(**batch["query"])
        losses = compute_losses(model, batch)
        head = model.decoder_head
        alone = head.loss(
            out.reason_states[:3], batch["decoder_input"][:3], batch["decoder_target"][:3], IGNORE
        )
    assert float(losses["reconstruction"]) == pytest.approx(float(alone), rel=1e-5)


@pytest.mark.parametrize("latent", [False, True])
def test_gradcache_covers_the_decoder_rows(make_model, tiny_lm, digits_dir, latent):
    from lame.training.gradcache import chunked_backward

    model = _with_decoder(make_model, tiny_lm) if latent else make_model().train()
    batch = _batch(model, digits_dir, rows=8, decoder_rows=5)

    def grads(run):
        model.zero_grad(set_to_none=True)
        losses = run()
        return {k: float(v.detach()) for k, v in losses.items()}, {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    def full():
        losses = compute_losses(model, batch)
        losses["total"].backward()
        return losses

    ref_losses, ref_grads = grads(full)
    losses, chunked = grads(lambda: chunked_backward(model, batch, 3))
    for key, value in ref_losses.items():
        assert losses[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert chunked.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        assert torch.allclose(chunked[name], grad, atol=2e-6, rtol=1e-4), name


def _config(path):
    return json.loads((path / "config.json").read_text())


def test_bad_decoder_directories_are_refused_before_anything_is_written(
    tiny_lm, tmp_path, digits_dir, capsys
):
    cases = {}
    cases["no-config"] = tmp_path / "no-config"
    shutil.copytree(tiny_lm, cases["no-config"])
    (cases["no-config"] / "config.json").unlink()
    cases["no-weights"] = tmp_path / "no-weights"
    shutil.copytree(tiny_lm, cases["no-weights"])
    (cases["no-weights"] / "model.safetensors").unlink()
    cases["no-tokenizer"] = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_lm, cases["no-tokenizer"])
    (cases["no-tokenizer"] / "tokenizer.json").unlink()
    cases["not-causal"] = tmp_path / "not-causal"
    shutil.copytree(tiny_lm, cases["not-causal"])
    bert = {**_config(tiny_lm), "model_type": "bert", "architectures": ["BertModel"]}
    (cases["not-causal"] / "config.json").write_text(json.dumps(bert))
    expected = {
        "no-config": "no config.json",
        "no-weights": "no .safetensors weights",
        "no-tokenizer": "no tokenizer.json",
        "not-causal": "must be a causal language model",
    }
    for name, path in cases.items():
        with pytest.raises(InputError, match=re.escape(expected[name])):
            check_decoder_dir(path)
        out = tmp_path / f"run-{name}"
        args = ["--data", str(digits_dir), "--out", str(out), "--preset", "tiny", "--no-progress"]
        assert train_main([*args, "--latent-decoder", str(path)]) != 0
        assert expected[name] in capsys.readouterr().err
        assert not out.exists()


@pytest.fixture(scope="module")
def decoder_run(tiny_lm, digits_dir, tmp_path_factory):
    """Both stages of the tiny preset with the tiny LM as a fully trained latent decoder."""
    out = tmp_path_factory.mktemp("ckpt") / "lm-decoder"
    args = ["--data", str(digits_dir), "--out", str(out), "--preset", "tiny", "--no-progress"]
    args += ["--max-steps", "40", "--batch-size", "8", "--lr", "0.01", "--save-every", "20"]
    args += ["--latent-decoder", str(tiny_lm), "--latent-decoder-mode", "full", "--decoder-rows", "6"]
    assert train_main(args) == 0
    return out


def test_both_stages_train_and_the_reconstruction_falls(decoder_run, tiny_lm):
    logs = [json.loads(line) for line in (decoder_run / "metrics.jsonl").read_text().splitlines()]
    rows = [m for m in logs if "reconstruction" in m]
    assert {m["stage"] for m in rows} == {"warmup", "joint"}
    assert rows[-1]["reconstruction"] < 0.8 * rows[0]["reconstruction"], rows
    spec = _config(decoder_run)["latent_decoder"]
    from lame.decoders.lm import weights_hash

    assert spec["path"] == str(tiny_lm.resolve()) and spec["sha256"] == weights_hash(tiny_lm)
    assert spec["mode"] == "full" and spec["model_type"] == "qwen3"
    weights = load_file(str(decoder_run / "model.safetensors"))
    assert not any(k.startswith("decoder_head.") for k in weights)
    trained = load_file(str(decoder_run / STATE_FILE))  # mode full: the projection and the LM
    assert any(k.startswith("proj.") for k in trained) and any(k.startswith("lm.") for k in trained)


def test_resume_needs_the_same_decoder_weights(decoder_run, tiny_lm, digits_dir, tmp_path):
    from lame.training.train import Trainer

    moved = tmp_path / "changed"
    shutil.copytree(tiny_lm, moved)
    model = load_model(decoder_run)
    model.config.latent_decoder = replace(model.config.latent_decoder, path=str(moved))
    from safetensors.torch import save_file

    state = load_file(str(moved / "model.safetensors"))
    first = next(iter(state))
    state[first] = state[first] + 1.0
    save_file(state, str(moved / "model.safetensors"), metadata={"format": "pt"})
    from lame.training.config import TrainConfig

    with pytest.raises(InputError, match="weights changed"):
        Trainer(model, TrainConfig(batch_size=8), digits_dir, tmp_path / "x", show_progress=False)


def test_checkpoint_loads_and_exports_without_the_decoder(
    decoder_run, tiny_lm, digits_dir, artifact_dir, tmp_path
):
    import onnx

    from lame_export.pipeline import ExportOptions, export_checkpoint
    from lame_runtime.artifact import MANIFEST

    hidden = tmp_path / "elsewhere"
    shutil.move(str(tiny_lm), hidden)  # the decoder directory is gone
    try:
        model = load_model(decoder_run)
        assert model.decoder_head is None
        vectors = model.encode(["sum of digits"])
        assert vectors.shape == (1, model.config.embed_dim)
        out = tmp_path / "artifact"
        export_checkpoint(  # the same options as the small-head artifact; its gates enforced
            decoder_run, out, ExportOptions(fp16=True, int8=True, calib_data=str(digits_dir), calib_size=32)
        )
    finally:
        shutil.move(str(hidden), tiny_lm)

    def files(root):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    assert files(out) == files(artifact_dir)
    for name in [f for f in files(out) if f.endswith(".onnx")]:
        ours, theirs = onnx.load(str(out / name)), onnx.load(str(artifact_dir / name))
        assert [n.op_type for n in ours.graph.node] == [n.op_type for n in theirs.graph.node], name
        shapes = lambda g: sorted((i.name, tuple(i.dims)) for i in g.initializer)  # noqa: E731
        assert shapes(ours.graph) == shapes(theirs.graph), name
    manifest = json.loads((out / MANIFEST).read_text())
    reference = json.loads((artifact_dir / MANIFEST).read_text())
    assert manifest.keys() == reference.keys()
    assert "latent_decoder" not in json.dumps(manifest)
