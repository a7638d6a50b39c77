"""Where the digits benchmark's 16x16 digit glyphs come from.

``handwritten`` (the default): scikit-learn's 1,797 real 8x8 handwritten digits, upsampled.
``rendered``: digits drawn from TrueType fonts that ship inside matplotlib (a ``train`` extra,
so every training install has them): seven faces (DejaVu Sans Bold / Sans Mono Bold / Serif
Bold / Sans, STIX General Bold, Computer Modern sans and roman), each render jittered in size,
stroke weight, rotation, position and contrast, so a glyph is never a lookup of a fixed bitmap.
Strokes are bold on purpose: plain 1-px font strokes carry a fifth of the handwriting's ink
and read worse than it (a linear probe on the pixels: 0.83 vs 0.95 held-out accuracy). It is the
perception-solved variant: a ~1 M-parameter vision tower reads these reliably, so the
benchmark's multi-step tiers measure composing, not reading 8x8 handwriting.

Either way the result is ``(glyphs [N, 16, 16] uint8, labels [N])``; samples are split 80/20
per digit before composing, so eval images never reuse a training render.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SLOT = 16
GLYPH_SOURCES = ("handwritten", "rendered")
# matplotlib/mpl-data/fonts/ttf file names: seven visibly different faces for digits.
RENDER_FONTS = (
    "DejaVuSans-Bold.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSans.ttf",
    "STIXGeneralBol.ttf",
    "cmss10.ttf",
    "cmr10.ttf",
)
RENDERS_PER_DIGIT = 180  # 1,800 renders, about sklearn's 1,797 samples
_SUPERSAMPLE = 4  # draw at 64x64, then downsample: anti-aliased strokes at 16x16


def font_dir() -> Path:
    """matplotlib's bundled TrueType folder (found without importing matplotlib itself)."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "--glyphs rendered needs matplotlib's bundled fonts: "
            "pip install 'lame-embed[train]' (matplotlib>=3.7)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf"
    missing = [name for name in RENDER_FONTS if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"matplotlib's font folder {folder} lacks {', '.join(missing)}")
    return folder


def font_manifest() -> list[dict]:
    """Each render font's file name and sha256 (recorded in meta.json: what drew the data)."""
    folder = font_dir()
    return [
        {"file": name, "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
        for name in RENDER_FONTS
    ]


def load_glyphs(source: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(glyphs, labels)`` of one glyph source (see the module docstring)."""
    if source == "handwritten":
        from sklearn.datasets import load_digits  # deferred: sklearn import is slow

        digits = load_digits()
        return _upsampled(digits.images), digits.target.astype(int)
    if source == "rendered":
        return rendered_glyphs(rng)
    raise ValueError(f"glyphs must be one of {GLYPH_SOURCES}, got {source!r}")


def _upsampled(images: np.ndarray) -> np.ndarray:
    """sklearn's 0-16 8x8 samples as 16x16 uint8 (scaled to 0-255, bilinear upsampling)."""
    scaled = np.round(images * (255.0 / 16.0)).astype(np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(img).resize((SLOT, SLOT), Image.Resampling.BILINEAR)) for img in scaled]
    )


def rendered_glyphs(
    rng: np.random.Generator, per_digit: int = RENDERS_PER_DIGIT
) -> tuple[np.ndarray, np.ndarray]:
    """``per_digit`` jittered renders of each digit, fonts taken in turn."""
    folder = font_dir()
    big = SLOT * _SUPERSAMPLE
    glyphs, labels = [], []
    for digit in range(10):
        for i in range(per_digit):
            # Size 13.5-16 px of the 16 px slot, an outline of 0.75-1.5 px, rotation +-5
            # degrees, centre moved up to 0.75 px, brightness 220-255: variation a reader must
            # generalise over, at a weight a small vision tower reads (linear pixel probe 0.98).
            size = float(rng.uniform(13.5, 16.0)) * _SUPERSAMPLE
            font = ImageFont.truetype(
                str(folder / RENDER_FONTS[i % len(RENDER_FONTS)]), size=max(8, round(size))
            )
            canvas = Image.new("L", (big, big), 0)
            draw = ImageDraw.Draw(canvas)
            shift = rng.uniform(-0.75, 0.75, 2) * _SUPERSAMPLE
            centre = (big / 2 + shift[0], big / 2 + shift[1])
            draw.text(
                centre,
                str(digit),
                fill=int(rng.integers(220, 256)),
                font=font,
                anchor="mm",
                stroke_width=int(rng.integers(3, 7)),
            )
            canvas = canvas.rotate(
                float(rng.uniform(-5.0, 5.0)), resample=Image.Resampling.BILINEAR, center=centre
            )
            glyphs.append(np.asarray(canvas.resize((SLOT, SLOT), Image.Resampling.BOX)))
            labels.append(digit)
    return np.stack(glyphs).astype(np.uint8), np.asarray(labels, dtype=int)
