"""A Qwen3-VL-Embedding directory imported at native resolution gives the model card's vectors
on a 4:3 photo, a tall page, two images in one query and a short video, through PyTorch and
through the exported graph and the runtime's Embedder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from embedder_fixtures import build_qwen3_embedder_dir, reference_embeddings

from lame.checkpoint import load_model
from lame.cli.import_embedder import main as import_main
from lame_export.cli import main as export_main
from lame_runtime import Embedder, Video

MAX_PIXELS = 16384
RNG = np.random.default_rng(11)
PHOTO = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # 4:3
PAGE = RNG.integers(0, 256, (176, 64, 3), dtype=np.uint8)  # a tall page
WIDE = RNG.integers(0, 256, (32, 96, 3), dtype=np.uint8)
# Ten frames at 4 fps, already at the size the video processor picks (its resize needs
# torchvision): the card samples five of them.
CLIP = RNG.integers(0, 256, (10, 32, 48, 3), dtype=np.uint8)
ROWS = [
    {"image": PHOTO, "text": "find the image"},
    {"image": PAGE},
    {"images": [PHOTO, WIDE], "text": "two three"},
    {"video": CLIP, "fps": 4.0, "text": "how many"},
    {"text": "seven"},
]


def _inputs(rows):
    texts = [r.get("text") for r in rows]
    images = [r.get("images") or r.get("image") for r in rows]
    videos = [Video(r["video"], r["fps"]) if "video" in r else None for r in rows]
    return texts, images, videos


@pytest.fixture(scope="module")
def imported_native(tmp_path_factory):
    root = tmp_path_factory.mktemp("native-embedder")
    directory = build_qwen3_embedder_dir(root / "Qwen3-VL-Embedding-tiny")
    ckpt = root / "ckpt"
    args = ["embedder", str(directory), "--out", str(ckpt), "--recipe", "qwen3-vl-embedding"]
    assert import_main([*args, "--resolution", "native", "--max-pixels", str(MAX_PIXELS)]) == 0
    return directory, ckpt


def _cosines(ours, reference):
    return (torch.as_tensor(np.asarray(ours)) * reference).sum(-1)


def test_native_import_equals_the_model_card_through_pytorch(imported_native):
    directory, ckpt = imported_native
    image = json.loads((ckpt / "preprocessor_config.json").read_text())["image"]
    assert image["resolution"] == "native" and image["max_pixels"] == MAX_PIXELS
    assert (image["video_min_pixels"], image["video_max_pixels"]) == (256, 16384)  # from the directory
    reference = reference_embeddings(directory, ROWS, MAX_PIXELS)
    texts, images, videos = _inputs(ROWS)
    ours = load_model(ckpt).encode_queries(texts, images, videos=videos)
    cosines = _cosines(ours, reference)
    assert cosines.min() >= 0.9999, cosines
    assert (reference @ reference.T).fill_diagonal_(0).max() < 0.9999  # rows differ


def test_native_import_exports_and_serves_through_the_embedder(imported_native, tmp_path):
    directory, ckpt = imported_native
    art = tmp_path / "art"
    assert export_main(["--ckpt", str(ckpt), "--out", str(art), "--max-sequence", "1024"]) == 0
    report = json.loads((art / "parity.json").read_text())
    assert report["fp32"]["min_cosine"] >= 0.9999
    texts, images, videos = _inputs(ROWS)
    embedder = Embedder(art, backend="onnxruntime")
    cosines = _cosines(
        embedder.encode_queries(texts, images, videos=videos),
        reference_embeddings(directory, ROWS, MAX_PIXELS),
    )
    assert cosines.min() >= 0.9999, cosines


def test_native_import_serves_the_model_cards_vectors(imported_native, tmp_path):
    """lame-serve on the imported native artifact: images (one, and two in one item) and a video
    folder under --image-root give the card's vectors. A folder carries no frame rate, so the
    card's own default for such frames (24 fps) samples it on both sides."""
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    import httpx
    from PIL import Image
    from serve_fixtures import ThreadServer

    from lame_runtime.serve.app import create_app
    from lame_runtime.serve.config import ServeConfig

    directory, ckpt = imported_native
    art = tmp_path / "art"
    assert export_main(["--ckpt", str(ckpt), "--out", str(art), "--max-sequence", "1024"]) == 0
    root = tmp_path / "root"
    (root / "clip").mkdir(parents=True)
    for name, picture in (("photo", PHOTO), ("page", PAGE), ("wide", WIDE)):
        Image.fromarray(picture).save(root / f"{name}.png")
    for number, frame in enumerate(CLIP):
        Image.fromarray(frame).save(root / "clip" / f"{number:02d}.png")
    items = [
        {"text": "find the image", "image": "photo.png"},
        {"image": "page.png"},
        {"text": "two three", "image": ["photo.png", "wide.png"]},
        {"text": "how many", "video": "clip"},
        "seven",
    ]
    rows = [dict(row, fps=24.0) if "video" in row else row for row in ROWS]
    config = ServeConfig(model_name="card", image_root=root, request_timeout_s=120)
    with ThreadServer(create_app(Embedder(art), config)) as server:
        answer = httpx.post(
            server.url + "/v1/embeddings", json={"model": "card", "input": items}, timeout=120
        )
    assert answer.status_code == 200, answer.text
    served = np.asarray([row["embedding"] for row in answer.json()["data"]])
    cosines = _cosines(served, reference_embeddings(directory, rows, MAX_PIXELS))
    assert cosines.min() >= 0.9999, cosines
