"""Native-resolution preprocessing (Qwen-VL families): images and videos as users have them ->
the model feed, with NumPy + Pillow only. Training calls the same functions.

A row holds a text and any number of visuals, each an image or a video, in the order given.
Images keep their aspect ratio (``smart_resize`` within the model's pixel budget); a video is
a list of frames (arrays or PIL images), a folder of frame files, or a video file (decoded by
PyAV, the ``[video]`` extra), sampled at the model's frame rate within its frame limits. The
grid-dependent inputs come from :mod:`lame_runtime.inputs.grid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lame_runtime.errors import InputError, InputTypeError, MissingFileError
from lame_runtime.inputs.grid import (
    NativeLayout,
    Visual,
    pack_slices,
    patchify_frames,
    rope_positions,
    smart_resize,
    visual_index,
)
from lame_runtime.inputs.images import (
    _RESAMPLE,
    ImageConfig,
    check_max_pixels,
    default_max_pixels,
    load_image,
)

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
# A video given as frames: what one row may hold at most before sampling (decoded frames are
# held in memory; a file is sampled while it is decoded).
MAX_INPUT_FRAMES = 4096


@dataclass(frozen=True)
class Video:
    """A video with its frame rate: ``frames`` (a list of frames, a [T, H, W, 3] array or a
    folder of frames) shot at ``fps`` frames per second. A bare list or folder has no known
    rate: every frame is a sample (Qwen2/2.5-VL) or 24 fps is assumed (Qwen3-VL, as its
    processor does); a video file reports its own."""

    frames: Any
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and (
            isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not 0 < self.fps < 1000
        ):
            raise InputError(f"Video fps must be a number in (0, 1000), got {self.fps!r}")


def layout_of(cfg: ImageConfig) -> NativeLayout:
    return NativeLayout(cfg.merge_size, cfg.window, cfg.position_side)


def _normalised(img: Image.Image, height: int, width: int, cfg: ImageConfig) -> np.ndarray:
    if img.size != (width, height):
        img = img.resize((width, height), _RESAMPLE[cfg.resample])
    array = np.asarray(img, dtype=np.float32) / 255.0
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    chw: np.ndarray = ((array - mean) / std).transpose(2, 0, 1)
    return chw


def image_visual(image: Any, cfg: ImageConfig, max_pixels: int | None = None) -> Visual:
    """One image (path, PIL image, HxWx3 array) at native resolution -> its patches and grid."""
    img = load_image(image, check_max_pixels(max_pixels) or default_max_pixels(cfg))
    factor = cfg.patch_size * cfg.merge_size
    height, width = smart_resize(img.height, img.width, factor, cfg.min_pixels, cfg.max_pixels)
    frames = _normalised(img, height, width, cfg)[None]
    patches, _ = patchify_frames(frames, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)
    return Visual(patches, (1, height // cfg.patch_size, width // cfg.patch_size))


def sample_indices(total: int, source_fps: float | None, cfg: ImageConfig) -> np.ndarray:
    """Which of ``total`` frames to keep, by the family's video processor: Qwen3-VL's rule
    (:func:`qwen3_sample_indices`) for a model with per-step time grids, else Qwen2/2.5-VL's:
    ``video_fps`` frames per second (``source_fps`` known; else every frame), within
    [video_min_frames, video_max_frames], a multiple of the temporal patch, spread uniformly."""
    if cfg.split_time:
        return qwen3_sample_indices(total, source_fps, cfg)
    step = cfg.temporal_patch_size
    if total < 1:
        raise InputError("the video has no frames")
    most = max(step, math.floor(min(cfg.video_max_frames, total) / step) * step)
    wanted = total if not source_fps else total / source_fps * cfg.video_fps
    wanted = min(max(wanted, cfg.video_min_frames), most, total)
    count = max(1, math.floor(wanted / step) * step) if total >= step else total
    indices: np.ndarray = np.arange(0, total, total / count).astype(np.int64)[:count]
    return indices


def video_visual(
    video: Any, cfg: ImageConfig, max_pixels: int | None = None, fps: float | None = None
) -> Visual:
    """A video -> its patches and grid. ``video``: a list of frames (arrays or PIL images), a
    folder of frame files (sorted by name), or a video file (PyAV). ``fps``: the frame rate of
    given frames (a file knows its own); None samples every frame up to the limits."""
    frames, source_fps = _read_frames(video, fps)
    keep = sample_indices(len(frames), source_fps, cfg)
    limit = check_max_pixels(max_pixels) or default_max_pixels(cfg)
    images = [load_image(frames[i], limit) for i in keep]
    return sampled_visual(images, keep, len(frames), source_fps, cfg)


def sampled_visual(
    images: list[Image.Image], keep: np.ndarray, total: int, source_fps: float | None, cfg: ImageConfig
) -> Visual:
    """The frames ``sample_indices`` kept (``keep``) of a video of ``total`` frames, as RGB
    images -> its patches and grid. A caller that reads frames itself (lame-serve, from a
    confined folder) decodes only the kept ones and finishes here, as ``video_visual`` does."""
    height, width = frame_size(images[0], cfg, len(images))
    stack = np.stack([_normalised(img, height, width, cfg) for img in images])
    patches, grid_t = patchify_frames(stack, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)
    grid = (grid_t, height // cfg.patch_size, width // cfg.patch_size)
    if cfg.split_time:  # Qwen3-VL: the prompt writes each step's time
        stamps = step_timestamps(keep, source_fps or QWEN3_DEFAULT_FPS, cfg.temporal_patch_size)
        return Visual(patches, grid, split_time=True, timestamps=stamps)
    seconds_per_step = cfg.temporal_patch_size / (source_fps * len(images) / total) if source_fps else 1.0
    interval = cfg.tokens_per_second * seconds_per_step if cfg.tokens_per_second else 1.0
    return Visual(patches, grid, interval=interval)


def frame_size(first: Image.Image, cfg: ImageConfig, count: int) -> tuple[int, int]:
    """(height, width) every frame of a video of ``count`` sampled frames is resized to."""
    if cfg.split_time:  # Qwen3-VL: the budget covers the clip; a frame at most an image's pixels
        return clip_resize(count, first.height, first.width, cfg)
    # A frame never gets more pixels than an image (the graph's patch bound follows max_pixels).
    factor = cfg.patch_size * cfg.merge_size
    most = min(cfg.video_max_pixels, cfg.max_pixels)
    return smart_resize(first.height, first.width, factor, min(cfg.video_min_pixels, most), most)


# Qwen3-VL's video processor assumes 24 fps for frames whose rate is unknown.
QWEN3_DEFAULT_FPS = 24.0


def qwen3_sample_indices(total: int, source_fps: float | None, cfg: ImageConfig) -> np.ndarray:
    """Qwen3-VL's rule: ``video_fps`` frames per second of the clip (24 fps assumed for frames
    without a rate), within [video_min_frames, video_max_frames] and the clip's length, spread
    with rounded ``linspace``."""
    if total < 1:
        raise InputError("the video has no frames")
    wanted = int(total / (source_fps or QWEN3_DEFAULT_FPS) * cfg.video_fps)
    count = min(max(wanted, cfg.video_min_frames), cfg.video_max_frames, total)
    indices: np.ndarray = np.linspace(0, total - 1, count).round().astype(np.int64)
    return indices


def clip_resize(frames: int, height: int, width: int, cfg: ImageConfig) -> tuple[int, int]:
    """Qwen3-VL's video resize: [video_min_pixels, video_max_pixels] bound the whole clip
    (frames x height x width, frames rounded to temporal patches), as its processor's
    ``smart_resize`` does; a frame above the image budget ``max_pixels`` is brought within it."""
    factor = cfg.patch_size * cfg.merge_size
    temporal = cfg.temporal_patch_size
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(frames / temporal) * temporal
    if t_bar * h_bar * w_bar > cfg.video_max_pixels:
        beta = math.sqrt((frames * height * width) / cfg.video_max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < cfg.video_min_pixels:
        beta = math.sqrt(cfg.video_min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar * w_bar > cfg.max_pixels:
        h_bar, w_bar = smart_resize(h_bar, w_bar, factor, min(cfg.min_pixels, cfg.max_pixels), cfg.max_pixels)
    return h_bar, w_bar


def step_timestamps(indices: np.ndarray, fps: float, temporal: int) -> tuple[float, ...]:
    """Seconds of each temporal step: the mean of its first and last frame's time (the last
    frame repeated to fill the final step), as Qwen3-VL's processor computes them."""
    picked = list(indices.tolist())
    picked += [picked[-1]] * (-len(picked) % temporal)
    times = [i / fps for i in picked]
    return tuple((times[i] + times[i + temporal - 1]) / 2 for i in range(0, len(times), temporal))


def _read_frames(video: Any, fps: float | None) -> tuple[list[Any], float | None]:
    if isinstance(video, Video):
        frames, rate = _read_frames(video.frames, video.fps)
        return frames, video.fps if video.fps is not None else rate
    if isinstance(video, (str, Path)):
        path = Path(video)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
            if not files:
                raise InputError(f"video folder {path} holds no frame files ({', '.join(FRAME_SUFFIXES)})")
            return _bounded(files, str(path)), fps
        if not path.is_file():
            raise MissingFileError(f"video not found: {path}")
        return _decode_file(path)
    if isinstance(video, np.ndarray) and video.ndim == 4:
        return _bounded(list(video), "video array"), fps
    if isinstance(video, (list, tuple)):
        if not video:
            raise InputError("a video needs at least one frame")
        return _bounded(list(video), "video"), fps
    raise InputTypeError(
        f"a video must be a list of frames, a [T, H, W, 3] array, a folder of frames or a video file, "
        f"got {type(video).__name__}"
    )


def _bounded(frames: list[Any], what: str) -> list[Any]:
    if len(frames) > MAX_INPUT_FRAMES:
        raise InputError(f"{what} has {len(frames)} frames; at most {MAX_INPUT_FRAMES} are read")
    return frames


def _decode_file(path: Path) -> tuple[list[Any], float | None]:
    try:
        import av  # PyAV: the optional [video] extra
    except ImportError as err:
        raise InputError(
            f"reading the video file {path} needs PyAV (pip install 'lame-embed[video]'); "
            "or pass the frames, or a folder of frame files"
        ) from err
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else None
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) > MAX_INPUT_FRAMES:
                    raise InputError(f"video {path} has more than {MAX_INPUT_FRAMES} frames")
    except InputError:
        raise
    except Exception as err:  # PyAV raises its own error classes for every container problem
        raise InputError(f"cannot decode the video {path}: {err}") from err
    if not frames:
        raise InputError(f"video {path} has no frames")
    return frames, rate


def image_tokens(image: Any, cfg: ImageConfig) -> int:
    """Visual tokens (after merging) the language model gets for one image, from its size
    alone: a file's header and EXIF orientation are read, its pixels are not decoded."""
    width, height = _displayed_size(image)
    factor = cfg.patch_size * cfg.merge_size
    h, w = smart_resize(height, width, factor, cfg.min_pixels, cfg.max_pixels)
    return (h // factor) * (w // factor)


def video_tokens(video: Any, cfg: ImageConfig) -> int:
    """Visual tokens (after merging) of one video. A folder of frames is counted from its file
    names and its first frame's header; frames in memory and video files are read (a file
    is decoded: its frame count is what sampling sees)."""
    if isinstance(video, (str, Path)) and Path(video).is_dir():
        frames, _ = _read_frames(video, None)
        count, first, fps = len(frames), frames[0], None
    else:
        frames, fps = _read_frames(video, None)
        count, first = len(frames), frames[0]
    kept = len(sample_indices(count, fps, cfg))
    width, height = _displayed_size(first)
    factor = cfg.patch_size * cfg.merge_size
    h, w = smart_resize(height, width, factor, cfg.video_min_pixels, cfg.video_max_pixels)
    steps = max(1, math.ceil(kept / cfg.temporal_patch_size))
    return steps * (h // factor) * (w // factor)


def visual_tokens(images: Any, video: Any, cfg: ImageConfig) -> int:
    """One row's visual tokens: its image or list of images, and its video (as
    :func:`row_visuals` reads them)."""
    many = list(images) if isinstance(images, (list, tuple)) else [] if images is None else [images]
    total = sum(image_tokens(image, cfg) for image in many)
    return total + (video_tokens(video, cfg) if video is not None else 0)


def _displayed_size(image: Any) -> tuple[int, int]:
    """(width, height) as ``load_image`` shows it: EXIF orientations 5-8 swap the sides."""
    if isinstance(image, np.ndarray):
        return int(image.shape[1]), int(image.shape[0])
    if isinstance(image, Image.Image):
        return _oriented(image)
    path = Path(image)
    if not path.is_file():
        raise MissingFileError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return _oriented(img)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err


def _oriented(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    return (height, width) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (width, height)


def row_visuals(
    images: Any, video: Any, cfg: ImageConfig, row: int, max_pixels: int | None = None
) -> list[Visual]:
    """One row's visuals: its image or list of images, in the order given, then its video."""
    out: list[Visual] = []
    many = list(images) if isinstance(images, (list, tuple)) else [] if images is None else [images]
    for position, item in enumerate(many):
        try:
            out.append(image_visual(item, cfg, max_pixels))
        except (InputError, InputTypeError, MissingFileError) as err:
            where = f"images[{row}]" + (f"[{position}]" if isinstance(images, (list, tuple)) else "")
            raise type(err)(f"{where}: {err}") from err
    if video is not None:
        try:
            out.append(video_visual(video, cfg, max_pixels))
        except (InputError, InputTypeError, MissingFileError) as err:
            raise type(err)(f"videos[{row}]: {err}") from err
    return out


def native_feed(
    ids: np.ndarray,
    mask: np.ndarray,
    visual_tokens: np.ndarray,
    visuals: list[list[Visual]],
    cfg: ImageConfig,
) -> dict[str, np.ndarray]:
    """Token rows (with one placeholder per visual token) + each row's visuals -> the feed of
    a native-resolution model."""
    layout = layout_of(cfg)
    flat = [v for row in visuals for v in row]
    feed = {"input_ids": ids, "attention_mask": mask}
    feed.update(pack_slices(flat, layout, cfg.patch_dim))
    feed["visual_index"] = visual_index(visual_tokens, visuals, layout, feed["pixel_values"].shape[1])
    feed["position_ids"] = rope_positions(ids, mask, visual_tokens, visuals, cfg.merge_size)
    return feed
