"""Image preprocessing with NumPy + Pillow only.

Reproduces the Qwen2-VL image processor's flat patch layout (the order its vision tower expects):
resize to a fixed resolution, rescale to [0, 1], normalise per channel, cut into
``patch_size`` squares grouped by ``merge_size`` x ``merge_size`` blocks, and repeat each image
``temporal_patch_size`` times along time (a still image is a one-frame video to Qwen2-VL).
A fixed resolution gives every image the same number of visual tokens, which keeps the exported
graph static in that dimension.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
from PIL import Image, ImageOps

from lame_runtime.errors import InputError, InputTypeError, IntegrityError, MissingFileError
from lame_runtime.persist import read_json

# OpenAI CLIP statistics: the Qwen2-VL image processor's defaults.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass
class ImageConfig:
    height: int = 16
    width: int = 64
    patch_size: int = 8
    temporal_patch_size: int = 2
    merge_size: int = 2
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    resample: str = "bicubic"
    # "fixed": every image resized to height x width (static shapes: fastest on TensorRT and
    # Jetson). "native" (the Qwen-VL families): each image keeps its aspect ratio within
    # [min_pixels, max_pixels] (lame_runtime.inputs.grid); the fields below serve that mode only
    # and are not written for a fixed-size model, whose files stay as they were.
    resolution: str = "fixed"
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28  # per frame (Qwen3-VL: per clip, as its processor reads it)
    video_fps: float = 2.0
    video_min_frames: int = 4
    video_max_frames: int = 768
    window: int | None = None  # Qwen2.5-VL: attention window side, in merged tokens
    position_side: int | None = None  # Qwen3-VL: side of the learned position table
    tokens_per_second: float | None = None  # Qwen2.5-VL: temporal positions per second of video
    split_time: bool = False  # Qwen3-VL: each temporal step its own position grid

    def __post_init__(self) -> None:
        if self.resolution not in ("fixed", "native"):
            raise InputError(f"resolution must be 'fixed' or 'native', got {self.resolution!r}")
        if self.resolution == "native":
            block = (self.patch_size * self.merge_size) ** 2
            for name in ("min_pixels", "max_pixels", "video_min_pixels", "video_max_pixels"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < block:
                    raise InputError(f"{name} must be an integer of at least {block}, got {value!r}")
            if self.min_pixels > self.max_pixels or self.video_min_pixels > self.video_max_pixels:
                raise InputError("min_pixels must not exceed max_pixels (for images and for video frames)")
        block = self.patch_size * self.merge_size
        if self.height % block or self.width % block:
            raise InputError(
                f"image size {self.height}x{self.width} must be divisible by patch_size*merge_size = {block}"
            )
        if self.resample not in _RESAMPLE:
            raise InputError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) before merging."""
        return self.height // self.patch_size, self.width // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def num_tokens(self) -> int:
        """Visual tokens the language model sees per image (after the 2x2 merger)."""
        return self.num_patches // (self.merge_size**2)

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size**2

    @property
    def native(self) -> bool:
        return self.resolution == "native"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.native:  # a fixed-size model's preprocessor_config.json is unchanged
            for name in NATIVE_FIELDS:
                data.pop(name)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ImageConfig:
        return cls.from_dict(read_json(path, InputError, dict))


NATIVE_FIELDS = (
    "resolution",
    "min_pixels",
    "max_pixels",
    "video_min_pixels",
    "video_max_pixels",
    "video_fps",
    "video_min_frames",
    "video_max_frames",
    "window",
    "position_side",
    "tokens_per_second",
    "split_time",
)

# Larger aspect ratios squeeze an image into a few pixels of the fixed input: refuse them
# (Qwen2-VL's image processor refuses the same bound).
MAX_ASPECT_RATIO = 200

# Pixel limit (decompression bombs and plain huge images): a 17 KB PNG can declare 89 Mpx,
# just under Pillow's own limit, and cost ~0.7 GB and 2 s per decode thread. The default is
# sized from the model's input: 100x its pixels, at least 25 Mpx (a 24 MP phone photo passes),
# at most Pillow's MAX_IMAGE_PIXELS. The size is read from the file's header before decoding.
MIN_DEFAULT_PIXELS = 25_000_000
DEFAULT_PIXEL_FACTOR = 100

# What Pillow raises for a bad file or a PIL image in a bad state (closed, lazily opened from
# a truncated file, an unconvertible mode): every one becomes InputError naming the item.
PIL_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    TypeError,
    KeyError,
    EOFError,
    MemoryError,
    Image.DecompressionBombError,
)
OUR_ERRORS = (InputError, InputTypeError, MissingFileError)


def default_max_pixels(cfg: ImageConfig | None = None) -> int:
    """The pixel limit used when none is given: see ``MIN_DEFAULT_PIXELS``."""
    model = cfg.height * cfg.width if cfg is not None else 0
    limit = max(MIN_DEFAULT_PIXELS, DEFAULT_PIXEL_FACTOR * model)
    pillow = Image.MAX_IMAGE_PIXELS
    return min(limit, int(pillow)) if pillow else limit


def check_max_pixels(max_pixels: Any) -> int | None:
    """Validate a ``max_pixels`` option (None: the default; 0 is not allowed)."""
    if max_pixels is None:
        return None
    if not isinstance(max_pixels, (int, np.integer)) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise InputError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return int(max_pixels)


def load_image(image: Any, max_pixels: int | None = None) -> Image.Image:
    """Path, open binary file, PIL image or array -> RGB PIL image, by one rule for every kind
    of input.

    The rule (training reads images through this same function):

    * **EXIF orientation** is applied to files and PIL images (a phone photo is embedded the
      way it is displayed); arrays carry no metadata and are taken as they are.
    * **8-bit** data is used as is; **16-bit** (``uint16`` arrays, modes ``I;16*`` and ``I``
      in [0, 65535]) is divided by 257 (65535 -> 255).
    * **Float** data (float arrays, mode ``F`` images and float TIFFs alike) must be finite and
      in [0, 1]; it is scaled by 255 and rounded. Anything else is refused, never clipped.
    * **Transparency** is composited on white; other modes convert to RGB.

    ``max_pixels`` (None: ``default_max_pixels()``) refuses larger images before decoding.
    Every problem raises ``InputError``/``InputTypeError``/``MissingFileError``.
    """
    limit = check_max_pixels(max_pixels) or default_max_pixels()
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.is_dir():
            raise InputError(f"{path} is a directory, not an image file")
        if not path.is_file():
            raise MissingFileError(f"image file not found: {path}")
        return _load_file(path, f"image {path}", limit)
    if isinstance(image, io.IOBase) or hasattr(image, "readinto"):
        # An open binary handle (``open_under``): decoded from this very file, never reopened
        # by name, so nothing can swap the file between a check and the read.
        return _load_file(image, "image", limit)
    if isinstance(image, Image.Image):
        try:
            _check_pixels(image.size, limit)
            image.load()  # a lazily opened file decodes here; a closed image fails here
            return _check_size(_pil_to_rgb(image))
        except OUR_ERRORS:
            raise
        except PIL_ERRORS as err:
            raise InputError(f"cannot read PIL image: {_describe(err)}") from err
    if isinstance(image, np.ndarray):
        if image.ndim in (2, 3):
            _check_pixels((image.shape[1], image.shape[0]), limit)
        return _check_size(_to_rgb(_array_to_pil(image)))
    raise InputTypeError(
        f"unsupported image type {type(image).__name__}: expected a path, an open binary file, "
        "a PIL image or a NumPy array"
    )


def _load_file(source: Any, label: str, limit: int) -> Image.Image:
    """Decode a path or an open binary handle (``label`` names it in errors)."""
    try:
        with Image.open(source) as img:
            _check_pixels(img.size, limit)  # from the header, before any decoding
            img.load()
            rgb = _pil_to_rgb(img)
    except OUR_ERRORS:
        raise
    except Image.DecompressionBombError as err:  # Pillow refused the header itself
        raise InputError(
            f"{label} exceeds the limit of {limit:,} pixels (max_pixels; --max-pixels on the CLIs): {err}"
        ) from None
    except PIL_ERRORS as err:
        raise InputError(f"cannot read {label}: {_describe(err)}") from err
    return _check_size(rgb)


def _describe(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return "out of memory while decoding"
    return f"{type(err).__name__}: {err}" if not str(err) else str(err)


def _check_pixels(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise InputError(
            f"image of {width}x{height} = {width * height:,} pixels exceeds the "
            f"limit of {limit:,} (max_pixels; --max-pixels on the CLIs)"
        )


def _check_size(img: Image.Image) -> Image.Image:
    width, height = img.size
    if width < 1 or height < 1:
        raise InputError(f"image is empty ({width}x{height} pixels)")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InputError(f"image aspect ratio {width}x{height} exceeds {MAX_ASPECT_RATIO}:1")
    return img


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise InputError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.size == 0:
        raise InputError(f"image array is empty (shape {array.shape})")
    if array.dtype.kind == "f":
        array = _float_to_eight(array)
    if array.dtype == np.uint16:
        array = _sixteen_to_eight(array)
    if array.dtype != np.uint8:
        raise InputTypeError(f"image arrays must be uint8, uint16 or float in [0, 1], got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _float_to_eight(array: np.ndarray) -> np.ndarray:
    """The float rule, for arrays, mode-F images and float TIFFs alike."""
    if not np.isfinite(array).all():
        raise InputError("float image has NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        raise InputError(f"float images must hold values in [0, 1], got [{low:g}, {high:g}]")
    return np.round(array.astype(np.float32) * 255.0).astype(np.uint8)


def _sixteen_to_eight(array: np.ndarray) -> np.ndarray:
    # Divide by 257 so that 65535 -> 255 exactly; rounding keeps mid-grey symmetric.
    return np.round(array.astype(np.float32) / 257.0).astype(np.uint8)


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    """A decoded PIL image (from a file or from the caller) -> RGB by the rule above."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "F":
        return _to_rgb(Image.fromarray(_float_to_eight(np.asarray(img))))
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputError(
                f"integer image (mode {img.mode}) must hold values in [0, 65535], "
                f"got [{int(values.min())}, {int(values.max())}]"
            )
        return _to_rgb(Image.fromarray(_sixteen_to_eight(values.astype(np.uint16))))
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white, as the Qwen processors' convert_rgb does: transparent means background.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def image_to_array(img: Image.Image, cfg: ImageConfig) -> np.ndarray:
    """RGB PIL image -> normalised float32 CHW array at the configured resolution."""
    if img.size != (cfg.width, cfg.height):
        img = img.resize((cfg.width, cfg.height), _RESAMPLE[cfg.resample])
    array = np.asarray(img, dtype=np.float32) / 255.0
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    chw: np.ndarray = ((array - mean) / std).transpose(2, 0, 1)
    return chw


def patchify(chw: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    """CHW -> [num_patches, patch_dim] in Qwen2-VL's flat (merge-block-major) patch order."""
    c, h, w = chw.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = h // p, w // p
    x = chw.reshape(c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
    return np.ascontiguousarray(x.reshape(gh * gw, c * t * p * p), dtype=np.float32)


def preprocess_images(
    images: Sequence[Any],
    cfg: ImageConfig,
    cache: dict[str, np.ndarray] | None = None,
    first_index: int = 0,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Images (None allowed for text-only rows) -> pixel_values [B, num_patches, patch_dim].

    ``cache`` (path -> patches) lets a training loop decode each image file once. A bad image
    raises one error naming it: ``images[<first_index + row>] (<path>): <problem>``.
    """
    out = np.zeros((len(images), cfg.num_patches, cfg.patch_dim), dtype=np.float32)
    limit = check_max_pixels(max_pixels) or default_max_pixels(cfg)
    for row, image in enumerate(images):
        if image is None:
            continue
        key = str(image) if cache is not None and isinstance(image, (str, Path)) else None
        if cache is not None and key is not None and key in cache:
            out[row] = cache[key]
            continue
        try:
            out[row] = patchify(image_to_array(load_image(image, limit), cfg), cfg)
        except (InputError, InputTypeError, MissingFileError) as err:
            raise type(err)(f"{describe_image(first_index + row, image)}: {err}") from err
        if cache is not None and key is not None:
            cache[key] = out[row].copy()
    return out


def describe_image(index: int, image: Any) -> str:
    """``images[3] ('a.png')`` or ``images[3] (array uint8 (0, 4))``: how errors name an item."""
    if isinstance(image, (str, Path)):
        what = repr(str(image))
    elif isinstance(image, np.ndarray):
        what = f"array {image.dtype} {image.shape}"
    else:
        what = type(image).__name__
    return f"images[{index}] ({what})"


# --------------------------------------------------------------------- confined opening
MAX_SYMLINKS = 40  # what the kernel allows on one path walk (ELOOP beyond)
NAME_MAX = 255  # bytes in one path component (Linux, most file systems)
PATH_MAX = 4096


def open_under(
    root: str | Path, relative: str, what: str = "image path", folder: str = "folder", sent: str | None = None
) -> BinaryIO:
    handle = walk_under(root, relative, what, folder, sent)
    if isinstance(handle, int):  # walk_under returns folders only when asked to
        os.close(handle)
        raise InputError(
            f"{what} {_shown(relative if sent is None else sent)} is a folder, not an image file"
        )
    return handle


def walk_under(
    root: str | Path,
    relative: str,
    what: str = "image path",
    folder: str = "folder",
    sent: str | None = None,
    folders: bool = False,
) -> BinaryIO | int:
    """Open ``relative`` for reading, confined to ``root``, race-free; -> a binary handle.

    Checking a resolved path and then opening the name again lets a symlink swapped in between
    lead anywhere. Here the path is walked one component at a time from a descriptor of
    ``root`` (``openat`` with ``O_NOFOLLOW``): every step is taken from a folder already open
    and known to be inside, and a symlink is read (``readlinkat``) and walked the same way, so
    the file returned is the file checked, whatever changes on disk meanwhile. ``..`` may not
    climb above ``root``; an absolute symlink is followed only into ``root``.

    Every refusal is a ``LameError`` naming ``what`` and the path as given (never the
    server-side folder it resolves in; ``sent``: the client's spelling of it, when the caller
    rewrote it): ``IntegrityError`` for a path leading outside,
    ``MissingFileError`` for a missing file, ``InputError`` for the rest (NUL byte, a name
    too long, a symlink loop, a folder or a device instead of a file, no permission).

    ``folders``: a folder is taken too, returned as an open descriptor (the caller closes it;
    a video given as a folder of frames lists it and opens each frame through here).
    """
    if not isinstance(relative, str) or not relative.strip():
        raise InputTypeError(f"{what} must be a non-empty string, got {type(relative).__name__}")
    label = f"{what} {_shown(relative if sent is None else sent)}"
    if "\x00" in relative:
        raise InputError(f"{label} holds a NUL byte")
    try:
        encoded = os.fsencode(relative)
    except UnicodeError:
        raise InputError(f"{label} is not valid Unicode (a lone surrogate)") from None
    if len(encoded) > PATH_MAX:
        raise InputError(f"{label} is longer than {PATH_MAX} bytes")
    if relative.endswith("/") and not folders:
        raise InputError(f"{label} ends with '/': it names a folder, not an image file")
    if relative.startswith(("/", "\\")):
        raise IntegrityError(f"{label} is absolute: it must be relative to the {folder} folder")
    real_root = os.path.realpath(root)
    root_fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stack = [root_fd]  # descriptors of the folders from the root down to the current one
    pending = deque(relative.split("/"))
    links = 0
    try:
        while pending:
            name = pending.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) == 1:
                    raise IntegrityError(f"{label} leads outside the {folder} folder ('..')")
                os.close(stack.pop())
                continue
            if len(os.fsencode(name)) > NAME_MAX:
                raise InputError(f"{label}: a name in it is longer than {NAME_MAX} bytes")
            last = not any(part not in ("", ".") for part in pending)
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            flags |= 0 if last else os.O_DIRECTORY
            try:
                fd = os.open(name, flags, dir_fd=stack[-1])
            except OSError as err:
                target = _link_target(name, stack[-1]) if err.errno in (errno.ELOOP, errno.ENOTDIR) else None
                if target is None:
                    raise _open_error(err, label, name, last) from None
                links += 1
                if links > MAX_SYMLINKS:
                    raise InputError(f"{label}: too many levels of symbolic links (a symlink loop)") from None
                if target.startswith("/"):  # absolute: allowed only into the root
                    inside = os.path.relpath(target, real_root) if target.startswith(real_root) else ""
                    if not inside or inside == ".." or inside.startswith("../"):
                        raise IntegrityError(
                            f"{label} leads outside the {folder} folder (a symlink pointing out)"
                        ) from None
                    while len(stack) > 1:
                        os.close(stack.pop())
                    target = inside
                pending.extendleft(reversed(target.split("/")))
                continue
            if not last:
                stack.append(fd)
                continue
            try:
                mode = os.fstat(fd).st_mode
                if folders and stat.S_ISDIR(mode):
                    return fd
                if not stat.S_ISREG(mode):
                    kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
                    raise InputError(f"{label} is {kind}, not an image file")
                os.set_blocking(fd, True)
                return os.fdopen(fd, "rb")
            except BaseException:
                os.close(fd)
                raise
        raise InputError(f"{label} names the {folder} folder itself, not a file")
    finally:
        for held in stack:
            os.close(held)


def _shown(path: str, limit: int = 80) -> str:
    """A client's path for a message: quoted, escaped, and cut when very long."""
    return repr(path) if len(path) <= limit else repr(path[: limit - 20]) + f"... ({len(path)} characters)"


def _link_target(name: str, dir_fd: int) -> str | None:
    """The target of symlink ``name`` in ``dir_fd``; None when it is not a symlink."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def _open_error(err: OSError, label: str, name: str, last: bool) -> Exception:
    """An OS refusal while walking a confined path -> one error naming the path as given."""
    if err.errno == errno.ENOENT:
        return MissingFileError(f"{label} not found")
    if err.errno == errno.ENOTDIR:
        return MissingFileError(f"{label} not found ({name!r} is not a folder)")
    if err.errno in (errno.EACCES, errno.EPERM):
        return InputError(f"{label} cannot be read (permission denied)")
    if err.errno == errno.ENAMETOOLONG:
        return InputError(f"{label} is too long for the file system")
    if err.errno == errno.ELOOP:
        return InputError(f"{label}: too many levels of symbolic links (a symlink loop)")
    reason = err.strerror or type(err).__name__
    return InputError(f"{label} cannot be opened ({reason})")
