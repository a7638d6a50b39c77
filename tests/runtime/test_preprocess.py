"""The one preprocessing implementation (lame_runtime), checked against Qwen2-VL's processor."""

import numpy as np
import pytest
from PIL import Image

from lame_runtime.inputs.images import ImageConfig, image_to_array, load_image, patchify, preprocess_images
from lame_runtime.inputs.preprocess import Preprocessor
from lame_runtime.inputs.text import TextProcessor


@pytest.fixture
def preprocessor(digits_dir):
    return Preprocessor(TextProcessor(digits_dir / "tokenizer.json", 12), ImageConfig())


def test_patch_order_matches_qwen2_vl_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cfg = ImageConfig(height=32, width=64, patch_size=8, merge_size=2)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))
    reference = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2)
    ref = reference(images=[image], do_resize=False, return_tensors="np")
    ours = patchify(image_to_array(load_image(image), cfg), cfg)
    assert ref["image_grid_thw"].tolist() == [[1, 4, 8]]
    assert ours.shape == ref["pixel_values"].shape
    assert np.abs(ours - ref["pixel_values"]).max() <= 1e-5


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16"])
def test_image_modes_and_sizes(mode, tmp_path):
    cfg = ImageConfig()
    rng = np.random.default_rng(1)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (20, 50), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (20, 50, 4), dtype=np.uint8)).convert(mode)
    path = tmp_path / "x.png"
    img.save(path)
    from_path = preprocess_images([str(path)], cfg)
    from_pil = preprocess_images([img], cfg)
    assert from_path.shape == (1, cfg.num_patches, cfg.patch_dim)
    assert np.isfinite(from_path).all()
    assert np.abs(from_path - from_pil).max() <= 1e-6


def test_sixteen_bit_array_matches_its_eight_bit_rescale():
    cfg = ImageConfig()
    eight = np.random.default_rng(2).integers(0, 256, (16, 64, 3), dtype=np.uint8)
    sixteen = eight.astype(np.uint16) * 257
    assert np.abs(preprocess_images([eight], cfg) - preprocess_images([sixteen], cfg)).max() == 0


def test_bad_image_inputs_are_named():
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image("nope.png")
    with pytest.raises(TypeError, match="uint8, uint16 or float"):
        load_image(np.zeros((4, 4, 3), dtype=np.int32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # float arrays are [0, 1] images
        load_image(np.full((4, 4, 3), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((4, 4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="divisible"):
        ImageConfig(height=15)


def test_left_padding_and_image_placeholders(preprocessor):
    feed = preprocessor(["the digits add up to 9", None], [None, np.zeros((16, 64, 3), np.uint8)])
    ids, mask = feed["input_ids"], feed["attention_mask"]
    special = preprocessor.text.special
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert mask[:, -1].all(), "left padding: every row ends with a real token"
    assert (ids[mask == 0] == special["pad"]).all()
    assert (ids == special["image"]).sum(1).tolist() == [0, ImageConfig().num_tokens]
    assert feed["image_mask"].tolist() == [0, 1]
    assert feed["pixel_values"][0].max() == 0.0


def test_special_tokens_by_name_and_truncation(preprocessor):
    tokenizer = preprocessor.text.tokenizer
    for role, token in preprocessor.text.special.items():
        assert tokenizer.id_to_token(token) is not None
    with pytest.warns(UserWarning, match="truncated"):
        feed = preprocessor(["the digits add up to 9 " * 10])
    assert feed["attention_mask"].sum() == 1 + 12


def test_mismatched_inputs_rejected(preprocessor):
    with pytest.raises(ValueError, match="equal lengths"):
        preprocessor(["a", "b"], [None])
    with pytest.raises(ValueError, match="neither text nor image"):
        preprocessor([None], [None])
    with pytest.warns(UserWarning, match="empty text"):  # documented: [BOS] alone, warned
        assert preprocessor([""], [None])["attention_mask"].sum() == 1
    with pytest.raises(TypeError, match="list of strings"):
        preprocessor("a single string")
