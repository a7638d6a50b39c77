"""The CoT and latent baselines: cached step-by-step decoding equals one full pass, training
runs through the CLI, and the methods refuse inconsistent configs and ONNX export."""

import numpy as np
import pytest
import torch

from lame.cli.train import main as train_main
from lame.config import LameConfig, load_preset
from lame.data.batching import Collator
from lame.data.dataset import load_train
from lame.methods.cot import cot_generate, cot_teacher_forced
from lame.methods.latent import latent_forward
from lame.training.objective import compute_losses
from lame_export.cli import main as export_main

TEXTS = ["Find the image that matches the statement. the digits add up to 12", None, "the largest digit is 7"]


def _feed(model, digits_dir):
    images = [
        None,
        str(digits_dir / "images" / "train_00001.png"),
        str(digits_dir / "images" / "train_00002.png"),
    ]
    return model.feed_to_tensors(model.preprocessor(TEXTS, images))


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_latent_steps_with_cache_equal_one_full_pass(make_model, digits_dir, family):
    overrides = dict(method="latent", bottleneck_mask=False, num_reason_tokens=3)
    if family == "idefics3":
        spec = load_preset("tiny-idefics3")["model"]
        overrides.update(backbone=LameConfig.from_dict(spec).backbone, image=LameConfig.from_dict(spec).image)
    model = make_model(**overrides)
    feed = _feed(model, digits_dir)
    with torch.no_grad():
        out = latent_forward(model, **feed)
        # Replay: feed the recorded step states as ordinary inputs in one uncached pass.
        embeds, is_image, _ = model.input_embeds(**feed)
        batch, length = feed["input_ids"].shape
        fed = torch.cat(
            [
                embeds[:, :0],
                model.run(embeds, feed["attention_mask"], is_image, length)[:, -1:],
                out.reason_states[:, :-1],
            ],
            1,
        )
        summary = model.summary_tokens.unsqueeze(0).expand(batch, -1, -1)
        sequence = torch.cat([embeds, fed, summary], 1)
        extra = feed["attention_mask"].new_ones(batch, fed.shape[1] + summary.shape[1])
        valid = torch.cat([feed["attention_mask"], extra], 1)
        image = torch.cat([is_image, torch.zeros_like(extra, dtype=torch.bool)], 1)
        full = model.run(sequence, valid, image, length)
    k = model.config.num_reason_tokens
    torch.testing.assert_close(out.reason_states, full[:, length : length + k], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.summary_states, full[:, length + k :], atol=1e-5, rtol=1e-4)


def test_cot_generation_matches_teacher_forcing_on_its_own_tokens(make_model, digits_dir):
    model = make_model(method="cot", bottleneck_mask=False, num_reason_tokens=0)
    feed = _feed(model, digits_dir)
    with torch.no_grad():
        generated = cot_generate(model, **feed, max_new_tokens=6, stop_at_eos=False)
        tokens = generated.tokens
        assert tokens.shape == (3, 6)
        targets = torch.cat([tokens, torch.full_like(tokens[:, :1], model.pad_token_id)], 1)
        rationale = {"ids": tokens, "valid": torch.ones_like(tokens), "targets": targets}
        forced, _ = cot_teacher_forced(model, feed, rationale)
        # Greedy decoding picked the argmax of the same logits the teacher-forced pass computes.
        hidden = model.run(*_full_sequence(model, feed, tokens))
        length = feed["input_ids"].shape[1]
        logits = model.lm_logits(hidden[:, length - 1 : length + 5])
    assert torch.equal(logits.argmax(-1), tokens)
    torch.testing.assert_close(generated.output.embedding, forced.embedding, atol=1e-5, rtol=1e-4)


def _full_sequence(model, feed, tokens):
    embeds, is_image, _ = model.input_embeds(**feed)
    sequence = torch.cat([embeds, model.backbone.embed_tokens(tokens)], 1)
    valid = torch.cat([feed["attention_mask"], torch.ones_like(tokens)], 1)
    image = torch.cat([is_image, torch.zeros_like(tokens, dtype=torch.bool)], 1)
    return sequence, valid, image, feed["input_ids"].shape[1]


def test_cot_stops_rows_at_eos_and_masks_the_rest(make_model, digits_dir):
    model = make_model(method="cot", bottleneck_mask=False, num_reason_tokens=0)
    eos = model.preprocessor.text.special["eos"]
    feed = _feed(model, digits_dir)
    with torch.no_grad():
        first = cot_generate(model, **feed, max_new_tokens=1, stop_at_eos=False).tokens[:, 0]
        # Make row 0's first greedy token EOS by steering the EOS embedding row (a tied head).
        weight = model.backbone.model.get_input_embeddings().weight
        weight[eos] = weight[first[0]] * 10
        out = cot_generate(model, **feed, max_new_tokens=4)
    stopped = [i for i in range(3) if (out.tokens[i] == model.pad_token_id).all()]
    assert 0 in stopped and len(stopped) < 3 or out.tokens.shape[1] == 0
    assert np.isfinite(out.output.embedding.numpy()).all()


def test_cot_and_latent_losses(make_model, digits_dir):
    rows = load_train(digits_dir)[:6]
    cot = make_model(method="cot", bottleneck_mask=False, num_reason_tokens=0).train()
    batch = Collator(cot.preprocessor, 24, 1, rationale_tokens=64)(rows)
    assert batch["rationale"]["targets"].shape[1] == batch["rationale"]["ids"].shape[1] + 1
    losses = compute_losses(cot, batch)
    assert set(losses) == {"contrastive", "lm", "total"}
    latent = make_model(method="latent", bottleneck_mask=False, num_reason_tokens=2).train()
    losses = compute_losses(latent, Collator(latent.preprocessor, 24, 1)(rows))
    assert set(losses) == {"contrastive", "total"}
    losses["total"].backward()
    grads = [p.grad for p in latent.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_methods_train_through_the_cli_and_cot_learns_its_rationales(digits_dir, tmp_path, capsys):
    for method in ("cot", "latent"):
        out = tmp_path / method
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
                    method,
                    "--max-steps",
                    "30",
                    "--batch-size",
                    "8",
                    "--max-new-tokens",
                    "16",
                    "--no-progress",
                ]
            )
            == 0
        )
        config = LameConfig.load(out / "config.json")
        assert config.method == method and not config.bottleneck_mask
    import json

    metrics = [json.loads(line) for line in (tmp_path / "cot" / "metrics.jsonl").open()]
    lm = [m["lm"] for m in metrics if "lm" in m]
    assert lm[-1] < 0.92 * lm[0]  # warm-up freezes the (tied) LM head: ~24 joint steps
    capsys.readouterr()
    assert export_main(["--ckpt", str(tmp_path / "cot"), "--out", str(tmp_path / "art")]) != 0
    assert "one-pass methods" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(method="cot", num_reason_tokens=4, bottleneck_mask=False), "no reason tokens"),
        (dict(method="latent", num_reason_tokens=0, bottleneck_mask=False), "latent steps"),
        (dict(method="discriminative", num_reason_tokens=0, bottleneck_mask=True), "bottleneck"),
        (dict(method="coconut"), "method must be one of"),
    ],
)
def test_inconsistent_method_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        LameConfig(**overrides)
