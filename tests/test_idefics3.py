"""Idefics3 / SmolVLM adapter: unpatchify is exact, hidden states equal HF's forward,
both stages train and the export meets fp32 parity."""
import json

import numpy as np
import pytest
import torch

from lame.backbones.idefics3 import unpatchify
from lame.config import LameConfig, load_preset
from lame_runtime.images import image_to_array, load_image

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
    feed = idefics.feed_to_tensors(idefics.preprocessor(
        ["the digits add up to 9", None, "a longer text to pad the others"],
        [None, IMAGE, IMAGE[::-1].copy()]))
    rows = feed["image_mask"].bool()
    images = unpatchify(feed["pixel_values"][rows], idefics.config.image)
    positions = idefics.backbone.position_ids(feed["attention_mask"], None)
    with torch.no_grad():
        ours = idefics.hidden_states(**feed)[:, : feed["input_ids"].shape[1]]
        reference = idefics.backbone.model(
            input_ids=feed["input_ids"], attention_mask=feed["attention_mask"],
            pixel_values=images[:, None], position_ids=positions).last_hidden_state
    valid = feed["attention_mask"].bool()
    assert torch.allclose(ours[valid], reference[valid], atol=1e-5)


def test_non_square_images_are_refused(make_model, tiny_config):
    config = LameConfig.from_dict(load_preset("tiny-idefics3")["model"])
    with pytest.raises(ValueError, match="square"):
        make_model(backbone=config.backbone, image=tiny_config.image)


def test_trains_both_stages_and_exports_with_parity(digits_dir, tmp_path):
    from lame.cli.train import main as train_main
    from lame_export.cli import main as export_main

    ckpt, art = tmp_path / "ckpt", tmp_path / "art"
    assert train_main(["--data", str(digits_dir), "--out", str(ckpt), "--preset",
                       "tiny-idefics3", "--max-steps", "2", "--warmup-fraction", "0.5",
                       "--batch-size", "8", "--eval-every", "0", "--no-progress"]) == 0
    stages = {json.loads(line)["stage"] for line in (ckpt / "metrics.jsonl").open()}
    assert {"warmup", "joint"} <= stages
    assert export_main(["--ckpt", str(ckpt), "--out", str(art)]) == 0
    report = json.loads((art / "parity.json").read_text())
    assert report["fp32"]["min_cosine"] >= 0.9999, report["fp32"]
    assert not report["tensorrt_lint"]["data_dependent_shape_ops"], report["tensorrt_lint"]
