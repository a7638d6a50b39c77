"""Qwen3-VL adapter: vision tower (learned positions, DeepStack mergers) and hidden states
equal Transformers' Qwen3VLModel; DeepStack really reaches the language layers; cached
decoding equals one full pass."""

import numpy as np
import pytest
import torch

from lame.config import LameConfig, load_preset

IMAGE = np.random.default_rng(5).integers(0, 256, (16, 64, 3), dtype=np.uint8)


@pytest.fixture
def qwen3(make_model):
    config = LameConfig.from_dict(load_preset("tiny-qwen3-vl")["model"])
    return make_model(backbone=config.backbone, image=config.image, bottleneck_mask=False)


def _grid(model, count):
    gh, gw = model.config.image.grid
    return torch.tensor([[1, gh, gw]] * count)


def test_vision_tower_and_deepstack_levels_equal_hf(qwen3):
    images = [IMAGE, IMAGE[::-1].copy(), IMAGE[:, ::-1].copy()]
    pixels = qwen3.feed_to_tensors(qwen3.preprocessor(images=images))["pixel_values"]
    backbone = qwen3.backbone
    assert backbone.deepstack_levels == 2
    with torch.no_grad():
        ours = backbone.encode_images(pixels)
        reference = backbone.model.visual(pixels.flatten(0, 1), grid_thw=_grid(qwen3, 3))
    hidden = backbone.hidden_size
    levels = ours.reshape(*ours.shape[:2], 1 + backbone.deepstack_levels, hidden)
    assert torch.allclose(levels[:, :, 0].flatten(0, 1), reference.pooler_output, atol=1e-5)
    for level, feature in enumerate(reference.deepstack_features, start=1):
        assert torch.allclose(levels[:, :, level].flatten(0, 1), feature, atol=1e-5)


def _hf_hidden(model, feed):
    rows = feed["image_mask"].bool()
    return model.backbone.model(
        input_ids=feed["input_ids"],
        attention_mask=feed["attention_mask"],
        pixel_values=feed["pixel_values"][rows].flatten(0, 1),
        image_grid_thw=_grid(model, int(rows.sum())),
        mm_token_type_ids=(feed["input_ids"] == model.image_token_id).int(),
    ).last_hidden_state


def test_hidden_states_equal_hf_forward(qwen3):
    feed = qwen3.feed_to_tensors(
        qwen3.preprocessor(["the digits add up to 9", None, "find it"], [None, IMAGE, IMAGE])
    )
    length = feed["input_ids"].shape[1]
    with torch.no_grad():
        ours = qwen3.hidden_states(**feed)[:, :length]
        reference = _hf_hidden(qwen3, feed)
        # The same model without its DeepStack sum differs at and after the image: the
        # comparison above would catch a tower whose levels never reach the language model.
        levels = qwen3.backbone.model.config.vision_config.deepstack_visual_indexes
        reference_flat = qwen3.backbone.model.visual.deepstack_visual_indexes
        qwen3.backbone.deepstack_blocks, saved = [], qwen3.backbone.deepstack_blocks
        qwen3.backbone.deepstack_levels = 0
        try:
            without = qwen3.hidden_states(**feed)[:, :length]
        finally:
            qwen3.backbone.deepstack_blocks, qwen3.backbone.deepstack_levels = saved, len(saved)
    assert levels == reference_flat
    valid = feed["attention_mask"].bool()
    assert torch.allclose(ours[valid], reference[valid], atol=1e-5)
    assert not torch.allclose(without[1][valid[1]], reference[1][valid[1]], atol=1e-3)


def test_cached_decoding_equals_one_pass(qwen3):
    from lame.methods.decoding import extend, prefill

    feed = qwen3.feed_to_tensors(qwen3.preprocessor(["count them", "x"], [IMAGE, IMAGE]))
    with torch.no_grad():
        _, state = prefill(qwen3, **feed)
        step = qwen3.summary_tokens.unsqueeze(0).expand(2, -1, -1)
        one = feed["attention_mask"].new_ones(2, 1)
        cached = extend(qwen3, state, step, one)
        embeds, is_image, visual = qwen3.input_embeds(**feed)
        assert visual is not None and visual.abs().sum() > 0
        length = embeds.shape[1]
        full = qwen3.run(
            torch.cat([embeds, step], 1),
            torch.cat([feed["attention_mask"], one], 1),
            torch.cat([is_image, one.bool() & False], 1),
            length,
            visual,
        )[:, -1:]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)


def _losses_and_grads(model, batch, chunk=None):
    from lame.training.gradcache import chunked_backward
    from lame.training.objective import compute_losses

    model.zero_grad(set_to_none=True)
    if chunk is None:
        losses = compute_losses(model, batch)
        losses["total"].backward()
    else:
        losses = chunked_backward(model, batch, chunk)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(losses["total"].detach()), grads


def test_gradient_checkpointing_and_gradcache_give_the_same_gradients(make_model, digits_dir):
    import copy

    from lame.data.batching import Collator
    from lame.data.dataset import load_train

    config = LameConfig.from_dict(load_preset("tiny-qwen3-vl")["model"])
    model = make_model(backbone=config.backbone, image=config.image).train()
    rows = load_train(digits_dir)[:6]
    batch = Collator(model.preprocessor, model.config.max_answer_tokens, 1)(rows)
    loss, grads = _losses_and_grads(model, batch)
    assert any("deepstack_merger_list" in n and g.abs().sum() > 0 for n, g in grads.items())
    checkpointed = copy.deepcopy(model)
    checkpointed.backbone.enable_gradient_checkpointing()
    for other in (_losses_and_grads(checkpointed, batch), _losses_and_grads(model, batch, 4)):
        assert other[0] == pytest.approx(loss, rel=1e-5)
        for name, grad in grads.items():
            assert torch.allclose(other[1][name], grad, atol=2e-6, rtol=1e-4), name


def test_bf16_lora_chunked_training_exports_with_parity(digits_dir, tmp_path):
    from lame.cli.train import main as train_main
    from lame_export.cli import main as export_main

    ckpt, art = tmp_path / "ckpt", tmp_path / "art"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(ckpt),
                "--preset",
                "tiny-qwen3-vl",
                "--max-steps",
                "2",
                "--warmup-fraction",
                "0.5",
                "--batch-size",
                "6",
                "--precision",
                "bf16",
                "--grad-checkpointing",
                "--chunk-size",
                "3",
                "--lora-rank",
                "2",
                "--eval-every",
                "0",
                "--no-final-eval",
                "--no-progress",
            ]
        )
        == 0
    )
    assert export_main(["--ckpt", str(ckpt), "--out", str(art)]) == 0
    import json

    report = json.loads((art / "parity.json").read_text())
    assert report["fp32"]["min_cosine"] >= 0.9999 and report["tensorrt_lint"]["ok"]
    assert report["text_graph"]["fp32"]["min_cosine"] >= 0.9999 and report["tensorrt_lint_text"]["ok"]


def test_backbone_path_loads_a_local_qwen3_vl_directory(digits_dir, tmp_path):
    import json

    from embedder_fixtures import build_qwen3_embedder_dir

    from lame.cli.train import main as train_main

    directory = build_qwen3_embedder_dir(tmp_path / "Qwen3-VL-tiny")
    ckpt = tmp_path / "ckpt"
    assert (
        train_main(
            [
                "--data",
                str(digits_dir),
                "--out",
                str(ckpt),
                "--preset",
                "tiny-qwen3-vl",
                "--backbone-path",
                str(directory),
                "--image-size",
                "32x64",
                "--max-steps",
                "1",
                "--batch-size",
                "4",
                "--no-final-eval",
                "--no-progress",
            ]
        )
        == 0
    )
    config = json.loads((ckpt / "config.json").read_text())
    assert config["backbone"]["hf_config"]["model_type"] == "qwen3_vl"
    assert config["image"]["mean"] == [0.5, 0.5, 0.5] and config["image"]["patch_size"] == 8
    saved = json.loads((ckpt / "tokenizer.json").read_text())
    assert any(t["content"] == "<|im_start|>" for t in saved["added_tokens"])  # its own
