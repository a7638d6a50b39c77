"""Native resolution for the Qwen-VL families: our hidden states equal Transformers' own model
fed its own image processor's tensors, for one batch mixing three aspect ratios, a row with two
images and a row with a video; the fixed-size path differs from it on a non-square image.

Transformers' video processor needs torchvision, which cannot be installed beside this CPU
build of torch, so the video's tensors are ours: the model side is compared exactly, and our
frame patching is checked against the layout the video processor documents (frames grouped in
temporal patches, merge-block-major)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from lame.backbones.native import native_image_config
from lame.config import LameConfig, load_preset
from lame_runtime.inputs.grid import patchify_frames
from lame_runtime.inputs.native import image_visual, native_feed, video_visual

FAMILIES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-qwen3-vl"]
RNG = np.random.default_rng(7)
PHOTO = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # 4:3
PAGE = RNG.integers(0, 256, (120, 40, 3), dtype=np.uint8)  # a tall page
WIDE = RNG.integers(0, 256, (30, 100, 3), dtype=np.uint8)
FRAMES = [RNG.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(4)]


def _preset(name: str) -> str:
    return "tiny" if name == "tiny-qwen2-vl" else name


@pytest.fixture(params=FAMILIES)
def native_model(request, make_model):
    preset = _preset(request.param)
    config = LameConfig.from_dict(load_preset(preset)["model"])
    if request.param == "tiny-qwen2-vl":
        config = replace(config, backbone=replace(config.backbone, family="qwen2_vl"))
    model = make_model(backbone=config.backbone, image=config.image, bottleneck_mask=False)
    image = replace(model.config.image, min_pixels=1024, max_pixels=6144)
    image = replace(image, video_min_pixels=1024, video_max_pixels=2048, video_min_frames=2)
    model.preprocessor.image = native_image_config(image, model.backbone)
    return model


def _rows(model, visuals):
    """Token rows: text, then per visual its placeholders, text between (a Qwen3-VL video: one
    placeholder run per temporal step, a timestamp token between, as its processor writes)."""
    merge = model.preprocessor.image.merge_size
    image_id, pad = model.image_token_id, model.pad_token_id
    vocab = model.preprocessor.text.vocab_size - 1  # the last id stands for video placeholders
    pool = [i for i in range(vocab) if i not in model.preprocessor.text.special.values()]
    text = pool * 4
    rows, kinds = [], []
    for row, items in enumerate(visuals):
        ids, kind = list(text[row : row + 3]), [0] * 3
        for visual, is_video in items:
            t, h, w = visual.grid
            steps = t if visual.split_time else 1
            per_step = visual.tokens(merge) // steps
            for step in range(steps):
                ids += [image_id] * per_step + [text[30 + step]]
                kind += [2 if is_video else 1] * per_step + [0]
        ids += text[60:62]
        kind += [0, 0]
        rows.append(ids)
        kinds.append(kind)
    length = max(map(len, rows))
    out = np.full((len(rows), length), pad, np.int64)
    mask = np.zeros_like(out)
    types = np.zeros_like(out)
    for i, (ids, kind) in enumerate(zip(rows, kinds)):
        out[i, length - len(ids) :], mask[i, length - len(ids) :], types[i, length - len(ids) :] = (
            ids,
            1,
            kind,
        )
    return out, mask, types


def _batch(model):
    cfg = model.preprocessor.image
    photo, page, wide = (image_visual(x, cfg) for x in (PHOTO, PAGE, WIDE))
    video = video_visual(FRAMES, cfg)
    visuals = [[(photo, False)], [(page, False), (wide, False)], [(video, True)]]
    ids, mask, types = _rows(model, visuals)
    feed = native_feed(ids, mask, ids == model.image_token_id, [[v for v, _ in r] for r in visuals], cfg)
    return feed, types, (photo, page, wide, video)


def _hf_processor(model):
    from transformers import Qwen2VLImageProcessorPil

    cfg = model.preprocessor.image
    return Qwen2VLImageProcessorPil(
        patch_size=cfg.patch_size,
        merge_size=cfg.merge_size,
        temporal_patch_size=cfg.temporal_patch_size,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
    )


def _hf_hidden(model, feed, types, video):
    """Transformers' model on its processor's image tensors (and the video's patches)."""
    processed = _hf_processor(model)(images=[PHOTO, PAGE, WIDE], return_tensors="pt")
    hf = model.backbone.model
    video_id = model.preprocessor.text.vocab_size - 1  # an ordinary id, replaced by the video
    hf.config.video_token_id = video_id  # our tokenizer marks both kinds with one placeholder
    ids = torch.from_numpy(np.where(types == 2, video_id, feed["input_ids"]))
    out = hf(
        input_ids=ids,
        attention_mask=torch.from_numpy(feed["attention_mask"]),
        pixel_values=processed["pixel_values"],
        image_grid_thw=processed["image_grid_thw"],
        pixel_values_videos=torch.from_numpy(video.patches),
        video_grid_thw=torch.tensor([video.grid]),
        mm_token_type_ids=torch.from_numpy(types).int(),
    )
    return out.last_hidden_state, processed


def test_native_hidden_states_equal_transformers(native_model):
    model = native_model
    feed, types, (photo, page, wide, video) = _batch(model)
    tensors = {name: torch.from_numpy(value) for name, value in feed.items()}
    length = feed["input_ids"].shape[1]
    with torch.no_grad():
        ours = model.hidden_states(**tensors)[:, :length]
        reference, processed = _hf_hidden(model, feed, types, video)
    # Our preprocessing gives the processor's own tensors (three aspect ratios, three grids).
    mine = np.concatenate([photo.patches, page.patches, wide.patches])
    assert np.allclose(mine, processed["pixel_values"].numpy(), atol=1e-5)
    assert [list(v.grid) for v in (photo, page, wide)] == processed["image_grid_thw"].tolist()
    assert len({v.grid[1:] for v in (photo, page, wide)}) == 3
    valid = torch.from_numpy(feed["attention_mask"]).bool()
    assert torch.allclose(ours[valid], reference[valid], atol=1e-5), (
        (ours[valid] - reference[valid]).abs().max()
    )


def test_video_patches_follow_the_processor_layout():
    frames = np.stack(FRAMES[:3]).astype(np.float32).transpose(0, 3, 1, 2)[:, :, :32, :48]
    patches, grid_t = patchify_frames(frames, 8, 2, 2)
    # Odd frame count: the last frame is repeated; step 1 holds frames 2 and 2.
    assert grid_t == 2
    padded = np.concatenate([frames, frames[-1:]])
    t, c, h, w = padded.shape
    x = padded.reshape(1, 2, 2, c, h // 16, 2, 8, w // 16, 2, 8)
    expected = x.transpose(0, 1, 4, 7, 5, 8, 3, 2, 6, 9).reshape(-1, c * 2 * 64)
    assert np.array_equal(patches, expected)


def test_fixed_size_path_differs_on_a_non_square_image(native_model):
    """The fixed-size mode squeezes the 4:3 photo to the preset's size: its grid and hidden
    states differ from what the reference model computes at native resolution."""
    model = native_model
    feed, types, (_, _, _, video) = _batch(model)
    with torch.no_grad():
        reference, _ = _hf_hidden(model, feed, types, video)
        fixed_model_image = replace(model.preprocessor.image, resolution="fixed")
        model.preprocessor.image = fixed_model_image
        fixed = model.feed_to_tensors(model.preprocessor([None], [PHOTO]))
        fixed_hidden = model.hidden_states(**fixed)[0, -1 - model.num_latent]
    assert (
        fixed_model_image.grid
        != image_visual(PHOTO, replace(fixed_model_image, resolution="native")).grid[1:]
    )
    # The photo row's last input state (row 0 of the native batch) against the fixed path's.
    assert not torch.allclose(fixed_hidden, reference[0, -1], atol=1e-3)


def test_encode_takes_several_images_per_row_and_videos(native_model, tmp_path):
    """The Python API at native resolution: a row with two images, a video given as frames
    and as a folder of frames (the same vectors), a text row; a fixed-size model refuses."""
    from PIL import Image

    model = native_model
    folder = tmp_path / "clip"
    folder.mkdir()
    for number, frame in enumerate(FRAMES):
        Image.fromarray(frame).save(folder / f"{number:03d}.png")
    vectors = model.encode(
        ["two pages", "a clip", "a clip", "words only"],
        [[PAGE, WIDE], None, None, None],
        videos=[None, FRAMES, folder, None],
    )
    assert vectors.shape == (4, model.config.embed_dim)
    assert np.allclose(vectors[1], vectors[2], atol=1e-6)
    one = model.encode(["two pages"], [[PAGE, WIDE]])
    assert np.allclose(one[0], vectors[0], atol=1e-5)  # batching does not change a row
    swapped = model.encode(["two pages"], [[WIDE, PAGE]])
    assert not np.allclose(swapped[0], vectors[0], atol=1e-3)  # order is read
    model.preprocessor.image = replace(model.preprocessor.image, resolution="fixed")
    from lame_runtime.errors import InputError, InputTypeError

    with pytest.raises(InputError, match="videos need a native-resolution model"):
        model.encode(["a clip"], videos=[FRAMES])
    with pytest.raises(InputTypeError, match="several images per row need a native-resolution"):
        model.encode(["two pages"], [[PAGE, WIDE]])
