"""Rows with several images or a video, for a native-resolution artifact (Qwen-VL families).

A fixed-size artifact embeds one image per item and no video: ``check_rows`` refuses the rest
before anything is decoded. At native resolution each row's images (in the order given) and
its video become ``Visual`` patches here, on the request's thread (``decode_rows``), and its
token row holds one placeholder per visual token (``token_rows``), the layout
``Preprocessor`` builds: [BOS], the visuals in order (images, then the video), the text.

A video is a folder of frame files (sorted by name, the suffixes of
``lame_runtime.inputs.native.FRAME_SUFFIXES``) or a video file under ``--image-root``, or a
``data:video/...;base64`` URI; files and data URIs need PyAV on the server. The folder is
opened confined to the root (``walk_under``) and only the frames the model samples are
decoded, each opened through the root again. Limits (``ServeConfig``): frames per video,
a file's duration, the pixels decoded for one video, and each frame's pixels (the image
limit); every refusal is one 4xx naming the item.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence, TypeVar

import numpy as np

from lame_runtime.errors import InputError, InputTypeError, IntegrityError, MissingFileError
from lame_runtime.inputs.grid import Visual
from lame_runtime.inputs.images import ImageConfig, default_max_pixels, load_image, open_under, walk_under
from lame_runtime.inputs.native import (
    FRAME_SUFFIXES,
    frame_size,
    image_visual,
    sample_indices,
    sampled_visual,
)
from lame_runtime.inputs.preprocess import placeholders
from lame_runtime.serve.config import ServeConfig
from lame_runtime.serve.errors import BadRequest
from lame_runtime.serve.schema import LocalImage, Row, VideoData, _decode_bytes, _decode_local, _shown

log = logging.getLogger("lame_runtime.serve")
LIBRARY_ERRORS = (InputError, InputTypeError, MissingFileError)
T = TypeVar("T")


def check_rows(rows: Sequence[Row], native: bool) -> None:
    """Refuse what a fixed-size artifact cannot embed, before any decoding."""
    if native:
        return
    for row in rows:
        if len(row.images) > 1:
            raise BadRequest(
                f"{row.where} has {len(row.images)} images; this model embeds one fixed-size image "
                "per item (several images per item need a native-resolution artifact): send them "
                "as separate items",
                code="too_many_images",
            )
        if row.video is not None:
            raise BadRequest(
                f"{row.where} holds a video; this model reads fixed-size images only (videos need "
                "a native-resolution artifact, a Qwen-VL family exported with resolution 'native')",
                code="video_not_supported",
            )


def decode_rows(rows: Sequence[Row], cfg: ImageConfig, config: ServeConfig) -> None:
    """Each row's images and video -> its ``Visual`` list in ``row.image`` (None: text only);
    blocking."""
    limit = config.max_pixels or default_max_pixels(cfg)
    for row in rows:
        visuals: list[Visual] = []
        for position, source in enumerate(row.images):
            where = f"{row.where} image {position}" if len(row.images) > 1 else row.where
            if isinstance(source, LocalImage):
                picture = _decode_local(source, config.image_root, limit)
            else:
                picture = _decode_bytes(source, where, limit)
            visuals.append(_named(where, image_visual, picture, cfg, limit))
        if row.video is not None:
            visuals.append(_video(row.video, cfg, config, limit))
        row.image = visuals or None


def _named(where: str, build: Callable[..., T], *args: Any) -> T:
    """``build(*args)``, a library error naming ``where`` (the decoders know no item)."""
    try:
        return build(*args)
    except LIBRARY_ERRORS as err:
        raise type(err)(f"{where}: {err}") from None


def _video(source: LocalImage | VideoData, cfg: ImageConfig, config: ServeConfig, limit: int) -> Visual:
    if isinstance(source, VideoData):
        return _decode_file(io.BytesIO(source.data), source.where, cfg, config, limit)
    root = config.image_root
    if root is None:  # video_source refuses paths without a root; this is a bug if reached
        raise BadRequest(f"{source.where}: local video paths are refused", code="local_path_refused")
    what = f"{source.where}: video path"
    try:
        opened = walk_under(root, source.relative, what, "--image-root", source.sent, folders=True)
    except (InputError, MissingFileError, IntegrityError) as err:
        log.info("refused %s (root %s): %s", source.where, root, err)
        raise
    if isinstance(opened, int):
        try:
            names = sorted(n for n in os.listdir(opened) if Path(n).suffix.lower() in FRAME_SUFFIXES)
        finally:
            os.close(opened)
        return _folder(names, source, cfg, config, limit)
    with opened:
        return _decode_file(opened, f"{what} {_shown(source.sent)}", cfg, config, limit)


def _folder(
    names: list[str], source: LocalImage, cfg: ImageConfig, config: ServeConfig, limit: int
) -> Visual:
    label = f"{source.where}: video folder {_shown(source.sent)}"
    if not names:
        raise BadRequest(f"{label} holds no frame files ({', '.join(FRAME_SUFFIXES)})", code="invalid_video")
    _check_frames(len(names), label, config)
    keep = sample_indices(len(names), None, cfg)
    frames, pixels = [], 0
    for index in keep:
        # Each frame is opened through the root again: a name swapped for a symlink meanwhile
        # still cannot lead outside it.
        relative = f"{source.relative.rstrip('/')}/{names[index]}"
        with open_under(config.image_root or "", relative, f"{label}: frame", "--image-root") as handle:
            frame = _named(f"{label}: frame {names[index]!r}", load_image, handle, limit)
        pixels = _check_pixels(pixels + frame.width * frame.height, label, config)
        frames.append(frame)
    _check_resized(frames, cfg, label, config)
    return _named(label, sampled_visual, frames, keep, len(names), None, cfg)


def _check_frames(count: int, label: str, config: ServeConfig) -> None:
    if count > config.max_video_frames:
        raise BadRequest(
            f"{label} has {count} frames; at most {config.max_video_frames} per video (--max-video-frames)",
            code="too_many_frames",
        )


def _check_pixels(pixels: int, label: str, config: ServeConfig) -> int:
    if pixels > config.max_video_pixels:
        raise BadRequest(
            f"{label} holds more than {config.max_video_pixels:,} pixels, its frames as decoded or "
            "as resized for the model (--max-video-pixels)",
            code="video_too_large",
        )
    return pixels


def _check_resized(frames: list[Any], cfg: ImageConfig, label: str, config: ServeConfig) -> None:
    """The sampled frames at the model's size (small frames grow to ``video_min_pixels``): what
    the queued patches hold, four bytes a value."""
    height, width = frame_size(frames[0], cfg, len(frames))
    _check_pixels(len(frames) * height * width, label, config)


def _decode_file(handle: BinaryIO, label: str, cfg: ImageConfig, config: ServeConfig, limit: int) -> Visual:
    """A video file (a confined handle or a data URI's bytes) -> its Visual, through PyAV."""
    try:
        import av  # PyAV: the optional [video] extra
    except ImportError:
        raise BadRequest(
            f"{label}: this server cannot decode video files (PyAV is not installed: pip install "
            "'lame-embed[video]'); send the video as a folder of frames under --image-root",
            code="video_not_supported",
        ) from None
    frames: list[np.ndarray] = []
    try:
        with av.open(handle) as container:
            if not container.streams.video:
                raise BadRequest(f"{label} holds no video stream", code="invalid_video")
            stream = container.streams.video[0]
            rate = float(stream.average_rate) if stream.average_rate else None
            seconds = float(container.duration) / 1_000_000 if container.duration else None
            _check_seconds(seconds, label, config)
            _check_frame(stream.width or 0, stream.height or 0, label, limit)  # before any decode
            pixels = 0
            for frame in container.decode(stream):
                if len(frames) == config.max_video_frames:
                    raise BadRequest(
                        f"{label} has more than {config.max_video_frames} frames (--max-video-frames)",
                        code="too_many_frames",
                    )
                _check_frame(frame.width, frame.height, label, limit)
                pixels = _check_pixels(pixels + frame.width * frame.height, label, config)
                frames.append(frame.to_ndarray(format="rgb24"))
                if rate:
                    _check_seconds(len(frames) / rate, label, config)
    except BadRequest:
        raise
    except Exception as err:  # noqa: BLE001  (PyAV raises its own classes for every bad file)
        # strerror, not str(err): PyAV's message ends with the handle's name (a descriptor)
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise BadRequest(f"{label}: cannot decode the video ({reason})", code="invalid_video") from None
    if not frames:
        raise BadRequest(f"{label} has no frames", code="invalid_video")
    keep = sample_indices(len(frames), rate, cfg)
    pictures = [_named(label, load_image, frames[i], limit) for i in keep]
    _check_resized(pictures, cfg, label, config)
    return _named(label, sampled_visual, pictures, keep, len(frames), rate, cfg)


def _check_frame(width: int, height: int, label: str, limit: int) -> None:
    if width * height > limit:
        raise BadRequest(
            f"{label}: a frame of {width}x{height} pixels exceeds the limit of {limit:,} pixels "
            "(--max-pixels)",
            code="video_too_large",
        )


def _check_seconds(seconds: float | None, label: str, config: ServeConfig) -> None:
    if seconds is not None and seconds > config.max_video_seconds:
        raise BadRequest(
            f"{label} lasts more than {config.max_video_seconds:g} s (--max-video-seconds)",
            code="video_too_long",
        )


def token_rows(
    text: Any, formatted: Sequence[str | None], visuals: Sequence[list[Visual] | None], merge: int
) -> tuple[list[list[int]], list[int]]:
    """-> (each row's tokens: [BOS], one placeholder per visual token, the text; the indices of
    the texts cut to ``max_text_tokens``). ``text``: the artifact's ``TextProcessor``."""
    limit = text.max_text_tokens
    rows: list[list[int]] = []
    truncated: list[int] = []
    for i, (body, row) in enumerate(zip(formatted, visuals)):
        counts = [placeholders(visual, merge) for visual in row or ()]
        total: int | None = 0
        if text.template is not None:
            ids, mask = text.encode_visual_rows([body], [counts])
            rows.append([int(t) for t, m in zip(ids[0], mask[0]) if m])
            if body:
                total = text.encode_limited(body, limit)[1]
        else:
            tokens: list[int] = []
            if body:
                tokens, total = text.encode_limited(body, limit)
            visual_tokens = sum(visual.tokens(merge) for visual in row or ())
            rows.append([text.special["bos"], *[text.special["image"]] * visual_tokens, *tokens])
        if total is None or total > limit:
            truncated.append(i)
    return rows, truncated


def warm_visuals(cfg: ImageConfig) -> list[list[Visual] | None]:
    """The visuals of the server's first batch: a text row (None) and a row with one small image."""
    blank = np.zeros((cfg.patch_size * cfg.merge_size * 2,) * 2 + (3,), np.uint8)
    return [None, [image_visual(blank, cfg)]]
