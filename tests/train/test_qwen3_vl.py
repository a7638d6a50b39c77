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
        input_ids=feed["input_ids"], attention_mask=feed["attention_mask"],
        pixel_values=feed["pixel_values"][rows].flatten(0, 1),
        image_grid_thw=_grid(model, int(rows.sum())),
        mm_token_type_ids=(feed["input_ids"] == model.image_token_id).int(),
    ).last_hidden_state


def test_hidden_states_equal_hf_forward(qwen3):
    feed = qwen3.feed_to_tensors(qwen3.preprocessor(
        ["the digits add up to 9", None, "find it"], [None, IMAGE, IMAGE]))
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
        full = qwen3.run(torch.cat([embeds, step], 1), torch.cat([feed["attention_mask"], one], 1),
                         torch.cat([is_image, one.bool() & False], 1), length, visual)[:, -1:]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
