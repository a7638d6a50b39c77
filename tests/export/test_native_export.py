"""Native-resolution export: one graph with dynamic slices and patches, parity-gated at several
image sizes, two images in a row and a video; the runtime's Embedder gives the PyTorch
model's vectors for such rows; TensorRT profiles cover the new dimensions; fixed-size
artifacts keep their files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from lame.checkpoint import save_checkpoint
from lame.config import LameConfig, load_preset
from lame_export.pipeline import ExportOptions, export_checkpoint
from lame_runtime import Embedder
from lame_runtime.engines.tensorrt.meta import (
    check_in_profile,
    engine_profiles,
    profile_shapes,
    trtexec_command,
)
from lame_runtime.errors import InputError

RNG = np.random.default_rng(3)
PHOTO = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
PAGE = RNG.integers(0, 256, (150, 50, 3), dtype=np.uint8)
WIDE = RNG.integers(0, 256, (30, 110, 3), dtype=np.uint8)
FRAMES = [RNG.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(5)]


@pytest.fixture(scope="module", params=["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def native_artifact(request, digits_dir, tmp_path_factory):
    from lame.model import LameModel
    from lame.tokenizer import preprocessor_for

    config = LameConfig.from_dict(load_preset(request.param)["model"])
    image = replace(config.image, resolution="native", min_pixels=1024, max_pixels=4096)
    config = replace(config, image=image)
    torch.manual_seed(0)
    model = LameModel(config, preprocessor_for(digits_dir, config)).eval()
    root = tmp_path_factory.mktemp("native")
    save_checkpoint(root / "ckpt", model, {}, {"step": 0, "stage": "joint"}, [])
    options = ExportOptions(int4=True, int8=True, calib_data=str(digits_dir), calib_size=16)
    report = export_checkpoint(root / "ckpt", root / "artifact", options)
    return model, root / "artifact", report


def test_native_graph_passes_its_gates_at_every_size(native_artifact):
    _, artifact, report = native_artifact
    assert not report["failures"]
    cases = report["fp32"]["cases"]
    labels = set(cases) if isinstance(cases, dict) else {case["label"] for case in cases}
    for wanted in ("b3/image", "b1/image-large", "b1/two-images", "b1/video", "b3/mixed"):
        assert wanted in labels
    assert report["fp32"]["min_cosine"] >= 0.9999
    assert report["text_graph"]["fp32"]["min_cosine"] >= 0.9999
    assert report["int8"]["passed"] and report["int4"]["passed"]  # each at its own threshold
    # The Conv3d patch embedding is exported as a MatMul (quantised like every linear).
    for name in ("model.onnx", "model_int8.onnx", "model_int4.onnx"):
        ops = {node.op_type for node in onnx.load(str(artifact / name), load_external_data=False).graph.node}
        assert "Conv" not in ops, name
    manifest = json.loads((artifact / "lame_artifact.json").read_text())
    names = [spec["name"] for spec in manifest["inputs"]]
    assert names[:3] == ["input_ids", "attention_mask", "pixel_values"] and "visual_index" in names
    assert manifest["max_patches"] > 0
    assert json.loads((artifact / "preprocessor_config.json").read_text())["image"]["resolution"] == "native"


def test_embedder_gives_the_pytorch_vectors_for_native_rows(native_artifact, tmp_path):
    from PIL import Image

    model, artifact, _ = native_artifact
    folder = tmp_path / "clip"
    folder.mkdir()
    for number, frame in enumerate(FRAMES):
        Image.fromarray(frame).save(folder / f"{number:02d}.png")
    texts = ["a photo", "two pages", None, "a clip", "words only"]
    images = [PHOTO, [PAGE, WIDE], WIDE, None, None]
    videos = [None, None, None, folder, None]
    embedder = Embedder(artifact, precision="fp32")
    ours = embedder.encode(texts, images, videos=videos, batch_size=2)
    reference = model.encode(texts, images, videos=videos)
    cosine = (ours * reference).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine
    int4 = Embedder(artifact, precision="int4").encode(texts, images, videos=videos)
    assert (int4 * reference).sum(axis=1).min() >= 0.99


def test_tensorrt_profile_covers_slices_and_patches(native_artifact):
    _, artifact, _ = native_artifact
    manifest = json.loads((artifact / "lame_artifact.json").read_text())
    profile = engine_profiles(manifest, {"max_slices": 8})
    assert profile.slices.as_list() == [1, 8, 8]  # the opt follows a lowered max
    assert profile.patches.max == manifest["max_patches"]
    shapes = profile_shapes(manifest["inputs"], profile)
    assert shapes["pixel_values"][2][:2] == [8, manifest["max_patches"]]
    assert shapes["position_ids"][0] == [3, 1, 2]
    line = trtexec_command("model_fp16.onnx", "model_fp16.plan", shapes)
    assert "pixel_values:8x" in line and "--stronglyTyped" in line
    with pytest.raises(InputError, match="slices = 9 in 'pixel_values' is outside"):
        check_in_profile("pixel_values", (9, 8, 384), [1, 4, 384], [8, 72, 384])
    with pytest.raises(InputError, match="max_patches .* exceeds the graph"):
        engine_profiles(manifest, {"max_patches": manifest["max_patches"] + 4})
    with pytest.raises(InputError, match="unknown profile overrides"):
        engine_profiles({**manifest, "max_patches": None}, {"max_slices": 8})


def test_fixed_size_files_carry_no_native_fields(make_model, tmp_path):
    model = make_model()
    model.preprocessor.save(tmp_path)
    image = json.loads((tmp_path / "preprocessor_config.json").read_text())["image"]
    assert set(image) == {
        "height",
        "width",
        "patch_size",
        "temporal_patch_size",
        "merge_size",
        "mean",
        "std",
        "resample",
    }


def test_native_calibration_keeps_batches_at_their_own_sizes(native_artifact, tmp_path):
    """A native calibration set stores whole batches, each at its images' native sizes (a
    dataset of mixed sizes calibrates on mixed sizes); the text graph's reader takes the text
    rows of each batch."""
    from PIL import Image

    from lame_calibration import CalibrationReader
    from lame_calibration import build as build_calibration

    _, artifact, _ = native_artifact
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = []
    for number, picture in enumerate([PHOTO, PAGE, WIDE, PHOTO[:, :32]]):
        Image.fromarray(picture).save(data / "images" / f"{number}.png")
        query = {"text": f"item {number}"}
        rows.append({"query": query, "target": {"image": f"images/{number}.png"}})
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = build_calibration(data, artifact, tmp_path / "calib.npz", size=8)
    reader = CalibrationReader(path, input_names=None)
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch)
    assert len(batches) == 4
    widths = {b["pixel_values"].shape[1] for b in batches if (b["visual_index"] >= 0).any()}
    assert len(widths) >= 2  # mixed sizes
    text = CalibrationReader(path, input_names=["input_ids", "attention_mask"], text_only=True)
    first = text.get_next()
    assert set(first) == {"input_ids", "attention_mask"}
