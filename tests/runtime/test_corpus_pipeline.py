"""Pipelined preprocessing, JPEG draft mode and streaming encode (lame_runtime.inputs.pipeline)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lame_runtime.errors import InputError, MissingFileError
from lame_runtime.inputs.images import ImageConfig, image_to_array, load_image
from lame_runtime.inputs.pipeline import PipelineOptions, open_image


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields plus sensor-like noise: what a camera JPEG looks like to a DCT."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + 1) * 0.5 + 0.5, np.cos(9 * y) * 0.5 + 0.5, x * y], -1)
    return (base * 255 + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, digits_dir) -> list[str]:
    return sorted(str(p) for p in Path(digits_dir).rglob("*.png"))[:40]


@pytest.mark.parametrize(
    "size,config",
    [
        ((1536, 2048), dict(height=224, width=224, patch_size=14)),
        ((3000, 4000), dict(height=448, width=448, patch_size=14)),
        ((1200, 1600), dict()),
    ],
)
def test_jpeg_draft_within_tolerance(tmp_path, size, config):
    """Stated tolerance of draft mode (factor 2): mean |diff| <= 0.5 and max <= 4 grey levels."""
    cfg = ImageConfig(**config)
    path = tmp_path / "photo.jpg"
    Image.fromarray(_photo(*size)).save(path, quality=90)
    std = np.asarray(cfg.std, dtype=np.float32)[:, None, None] * 255
    full = image_to_array(load_image(path), cfg)
    draft = image_to_array(open_image(str(path), cfg, draft_factor=2), cfg)
    diff = np.abs(draft - full) * std
    assert diff.mean() <= 0.5 and diff.max() <= 4.0 + 1e-3
    with Image.open(path) as img:  # draft mode really decoded fewer pixels
        img.draft("RGB", (cfg.width * 2, cfg.height * 2))
        assert img.size[0] < size[1]
    off = image_to_array(open_image(str(path), cfg, draft_factor=0), cfg)
    np.testing.assert_array_equal(off, full)


def test_draft_skips_small_and_bad_files(tmp_path):
    cfg = ImageConfig()
    small = tmp_path / "small.jpg"
    Image.fromarray(_photo(40, 100)).save(small)
    np.testing.assert_array_equal(np.asarray(open_image(str(small), cfg, 2)), np.asarray(load_image(small)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(small.read_bytes()[:50])
    with pytest.raises(InputError, match="cannot read image"):
        open_image(str(broken), cfg, 2)
    with pytest.raises(MissingFileError):
        open_image(str(tmp_path / "none.jpg"), cfg, 2)


@pytest.fixture(scope="module")
def embedder(artifact_dir):
    from lame_runtime import Embedder, RuntimeOptions

    return Embedder(
        artifact_dir, options=RuntimeOptions(threads=1, pipeline=PipelineOptions(workers=3, prefetch=2))
    )


def _serial(embedder, texts, images, batch_size):
    """The pre-pipeline path: preprocess and infer one batch after the other, one thread."""
    from lame_runtime.embedder import _unit_rows

    chunks = [
        embedder.infer(embedder.preprocessor(texts[i : i + batch_size], images[i : i + batch_size], i))
        for i in range(0, len(texts), batch_size)
    ]
    return _unit_rows(np.concatenate(chunks))


def test_pipelined_encode_equals_serial(embedder, image_files):
    texts = [None if i % 3 else f"the digits add up to {i}" for i in range(len(image_files))]
    images = [p if i % 4 else None for i, p in enumerate(image_files)]
    texts = [t if (t or im) else "7 3 1" for t, im in zip(texts, images)]
    got = embedder.encode(texts, images, batch_size=6)
    np.testing.assert_array_equal(got, _serial(embedder, texts, images, 6))


def test_pipelined_error_names_the_item(embedder, image_files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    images = list(image_files[:20])
    images[13] = str(bad)
    with pytest.raises(InputError, match=r"images\[13\].*bad\.png"):
        embedder.encode(images=images, batch_size=4)


def test_encode_iter_order_and_bounded_batches(embedder, image_files):
    consumed = []

    def items():  # a generator: encode_iter must not read it all up front
        for i, path in enumerate(itertools.cycle(image_files)):
            consumed.append(i)
            yield (f"id{i}", None if i % 2 else "a caption", path)

    stream = embedder.encode_iter(items(), batch_size=5)
    got_ids, got = [], []
    for ids, vectors in itertools.islice(stream, 4):
        assert len(ids) == len(vectors) <= 5 and vectors.dtype == np.float32
        got_ids += ids
        got.append(vectors)
    stream.close()
    prefetch = embedder.pipeline.options.prefetch
    assert len(consumed) <= 5 * (4 + prefetch)  # bounded read-ahead, not the infinite stream
    assert got_ids == [f"id{i}" for i in range(20)]
    texts = [None if i % 2 else "a caption" for i in range(20)]
    paths = [image_files[i % len(image_files)] for i in range(20)]
    np.testing.assert_allclose(np.concatenate(got), embedder.encode(texts, paths, batch_size=5), atol=1e-6)


def test_encode_iter_bare_items_and_instruction(embedder, image_files):
    ids, vectors = next(embedder.encode_iter(["a", "b", Path(image_files[0])], batch_size=8))
    assert ids == [0, 1, 2]
    np.testing.assert_allclose(
        vectors, embedder.encode(["a", "b", None], [None, None, image_files[0]]), atol=1e-6
    )
    _, with_instruction = next(embedder.encode_iter(["a"], instruction="Find:"))
    np.testing.assert_allclose(with_instruction, embedder.encode(["Find: a"]), atol=1e-6)
    with pytest.raises(InputError, match=r"items\[1\] has neither"):
        list(embedder.encode_iter([("x", "t", None), ("y", None, None)]))
    with pytest.raises(InputError, match="workers"):
        PipelineOptions(workers=0)
