"""Qwen2.5-VL adapter: windowed vision equals HF's, hidden states equal HF's forward,
both stages train and the export meets fp32 parity."""

import numpy as np
import pytest
import torch

from lame.config import LameConfig, load_preset

IMAGE = np.random.default_rng(3).integers(0, 256, (16, 64, 3), dtype=np.uint8)


@pytest.fixture
def qwen25(make_model):
    config = LameConfig.from_dict(load_preset("tiny-qwen2.5-vl")["model"])
    return make_model(backbone=config.backbone, bottleneck_mask=False)


def test_window_mask_is_not_trivial(qwen25):
    mask = qwen25.backbone.window_mask
    assert mask.any(1).all() and not mask.all(), "several windows, each attending within itself"


def test_batched_windowed_vision_equals_hf(qwen25):
    pixels = qwen25.feed_to_tensors(
        qwen25.preprocessor(images=[IMAGE, IMAGE[::-1].copy(), IMAGE[:, ::-1].copy()])
    )["pixel_values"]
    gh, gw = qwen25.config.image.grid
    with torch.no_grad():
        ours = qwen25.backbone.encode_images(pixels)
        reference = qwen25.backbone.model.visual(
            pixels.flatten(0, 1), grid_thw=torch.tensor([[1, gh, gw]] * 3)
        ).pooler_output
    assert torch.allclose(ours.flatten(0, 1), reference, atol=1e-5)


def test_hidden_states_equal_hf_forward(qwen25):
    feed = qwen25.feed_to_tensors(
        qwen25.preprocessor(["the digits add up to 9", None, "find it"], [None, IMAGE, IMAGE])
    )
    rows = feed["image_mask"].bool()
    gh, gw = qwen25.config.image.grid
    with torch.no_grad():
        ours = qwen25.hidden_states(**feed)[:, : feed["input_ids"].shape[1]]
        reference = qwen25.backbone.model(
            input_ids=feed["input_ids"],
            attention_mask=feed["attention_mask"],
            pixel_values=feed["pixel_values"][rows].flatten(0, 1),
            image_grid_thw=torch.tensor([[1, gh, gw]] * int(rows.sum())),
            mm_token_type_ids=(feed["input_ids"] == qwen25.image_token_id).int(),
        ).last_hidden_state
    valid = feed["attention_mask"].bool()
    assert torch.allclose(ours[valid], reference[valid], atol=1e-5)
