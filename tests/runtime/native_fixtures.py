"""A tiny native-resolution artifact (tiny-qwen2.5-vl, random weights) and a video folder, for
the tests of lame-serve and lame-search on several images per row and videos."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

RNG = np.random.default_rng(7)
PHOTO = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
PAGE = RNG.integers(0, 256, (150, 50, 3), dtype=np.uint8)
FRAMES = [RNG.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(5)]


@pytest.fixture(scope="module")
def native_artifact(digits_dir, tmp_path_factory) -> Path:
    """fp32 only, text graph included: what lame-serve and lame-search load."""
    import torch

    from lame.checkpoint import save_checkpoint
    from lame.config import LameConfig, load_preset
    from lame.model import LameModel
    from lame.tokenizer import preprocessor_for
    from lame_export.pipeline import ExportOptions, export_checkpoint

    config = LameConfig.from_dict(load_preset("tiny-qwen2.5-vl")["model"])
    config = replace(
        config, image=replace(config.image, resolution="native", min_pixels=1024, max_pixels=4096)
    )
    torch.manual_seed(0)
    model = LameModel(config, preprocessor_for(digits_dir, config)).eval()
    root = tmp_path_factory.mktemp("native")
    save_checkpoint(root / "ckpt", model, {}, {"step": 0, "stage": "joint"}, [])
    report = export_checkpoint(root / "ckpt", root / "artifact", ExportOptions())
    assert not report["failures"], report["failures"]
    return root / "artifact"


def write_pictures(folder: Path) -> dict[str, Path]:
    """photo.png, page.png and clip/ (five frame files) under ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(PHOTO).save(folder / "photo.png")
    Image.fromarray(PAGE).save(folder / "page.png")
    clip = folder / "clip"
    clip.mkdir(exist_ok=True)
    for number, frame in enumerate(FRAMES):
        Image.fromarray(frame).save(clip / f"{number:02d}.png")
    return {"photo": folder / "photo.png", "page": folder / "page.png", "clip": clip}


def write_video(path: Path, frames: int = 8, fps: int = 4, size: tuple[int, int] = (64, 48)) -> Path:
    """A small MPEG-4 file of random frames (needs PyAV: callers importorskip it)."""
    import av

    rng = np.random.default_rng(11)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
