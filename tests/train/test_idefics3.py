"""Idefics3 / SmolVLM adapter: unpatchify is exact, hidden states equal HF's forward,
both stages train and the export meets fp32 parity."""

import numpy as np
import pytest
import torch

from lame.backbones.idefics3 import unpatchify
from lame.config import LameConfig, load_preset
from lame_runtime.inputs.images import image_to_array, load_image

IMAGE = np.random.default_rng(4).integers(0, 256, (16, 64, 3), dtype=np.uint8)


@pytest.fixture
def idefics(make_model):
    config = LameConfig.from_dict(load_preset("tiny-idefics3")["model"])
    return make_model(backbone=config.backbone, image=config.image, bottleneck_mask=False)


def test_unpatchify_inverts_the_runtime_patch_layout(idefics):
    cfg = idefics.config.image
    pixels = idefics.preprocessor(images=[IMAGE])["pixel_values"]
    chw = image_to_array(load_image(IMAGE), cfg)
    assert np.abs(unpatchify(torch.from_numpy(pixels), cfg)[0].numpy() - chw).max() == 0.0


def test_hidden_states_equal_hf_forward(idefics):
    feed = idefics.feed_to_tensors(
        idefics.preprocessor(
            ["the digits add up to 9", None, "a longer text to pad the others"],
            [None, IMAGE, IMAGE[::-1].copy()],
        )
    )
    rows = feed["image_mask"].bool()
    images = unpatchify(feed["pixel_values"][rows], idefics.config.image)
    positions = idefics.backbone.position_ids(feed["attention_mask"], None)
    with torch.no_grad():
        ours = idefics.hidden_states(**feed)[:, : feed["input_ids"].shape[1]]
        reference = idefics.backbone.model(
            input_ids=feed["input_ids"],
            attention_mask=feed["attention_mask"],
            pixel_values=images[:, None],
            position_ids=positions,
        ).last_hidden_state
    valid = feed["attention_mask"].bool()
    assert torch.allclose(ours[valid], reference[valid], atol=1e-5)


def test_non_square_images_are_refused(make_model, tiny_config):
    config = LameConfig.from_dict(load_preset("tiny-idefics3")["model"])
    with pytest.raises(ValueError, match="square"):
        make_model(backbone=config.backbone, image=tiny_config.image)
