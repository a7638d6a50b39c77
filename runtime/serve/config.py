"""``ServeConfig``: every option of the service in one place (the CLI fills it; tests build it)."""

from __future__ import annotations

import hmac
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lame_runtime.errors import InputError, MissingFileError

# Names every loopback client uses in its Host header; behind a proxy or for remote clients,
# --allowed-hosts names the public name instead.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    model_name: str | None = None  # the name clients pass as `model` (default: folder name)
    # Request limits: each refusal is one 4xx naming the limit.
    max_body_bytes: int = 8 * 1024 * 1024
    max_items: int = 64  # rows per embeddings request / documents per add
    max_text_chars: int = 100_000  # longer texts are refused; past max_text_tokens: cut
    max_pixels: int | None = None  # None: the runtime's default (from the model's input)
    image_root: Path | None = None  # local image paths only under this folder
    # Native-resolution artifacts only (a fixed-size one takes one image per item, no video).
    max_images_per_item: int = 8
    max_video_frames: int = 512  # frames one video may hold (files in a folder, frames in a file)
    max_video_seconds: float = 600.0  # a video file's duration (a folder of frames has none)
    max_video_pixels: int = 100_000_000  # one video's pixels, as decoded and as resized
    max_k: int = 100
    # Dynamic batching (lame_runtime.serve.batching).
    batching: bool = True
    max_batch: int = 32  # rows per model call
    max_wait_ms: float = 5.0  # how long the first row of a batch waits for company
    max_queue: int = 1024  # queued rows; beyond it: 503 + Retry-After
    request_timeout_s: float = 30.0
    retry_after_s: int = 1
    # Security.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    auth_reads: bool = False  # also require a key for embeddings/search/models/metrics
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers at all
    # Host header names answered (DNS rebinding): loopback names unless told otherwise.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    # The served index.
    writable: bool = False
    save_interval_s: float = 30.0  # a writable index is saved this often when changed

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_items",
            "max_text_chars",
            "max_k",
            "max_batch",
            "max_queue",
            "max_images_per_item",
            "max_video_frames",
            "max_video_pixels",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not self.max_video_seconds > 0:
            raise InputError(f"max_video_seconds must be > 0, got {self.max_video_seconds!r}")
        for name in ("max_wait_ms", "request_timeout_s", "save_interval_s"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_queue < max(self.max_batch, self.max_items):
            # else a full-size request could never be queued: a 503 forever, not a limit
            raise InputError(
                f"max_queue ({self.max_queue}) must be at least max_batch "
                f"({self.max_batch}) and max_items ({self.max_items})"
            )
        if self.image_root is not None:
            self.image_root = Path(self.image_root)
            if not self.image_root.is_dir():
                raise MissingFileError(f"--image-root folder not found: {self.image_root}")
        self.api_keys = tuple(self.api_keys)
        self.allowed_hosts = tuple(self.allowed_hosts)
        if not self.allowed_hosts or not all(isinstance(h, str) and h.strip() for h in self.allowed_hosts):
            raise InputError(f"allowed_hosts must be non-empty host names, got {self.allowed_hosts!r}")

    def key_ok(self, presented: str | None) -> bool:
        """Constant-time check of a presented bearer key against every configured key."""
        if presented is None:
            return False
        ok = False
        for key in self.api_keys:  # no early exit: the time does not say which key matched
            ok |= hmac.compare_digest(presented.encode(), key.encode())
        return ok


def read_api_keys(path: str | Path) -> tuple[str, ...]:
    """One key per line; blank lines and ``#`` comments are skipped. An empty file is an error
    (it would lock every write out, or, worse, be mistaken for "no auth").

    Like ssh with a private key, a file that others may write is refused: anyone who can
    write it can add a key of their own. Every problem names the file."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise MissingFileError(f"API key file not found: {path}") from None
    except OSError as err:
        raise InputError(f"API key file {path} cannot be read: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"API key file {path} is not a regular file")
    if info.st_mode & 0o022:
        raise InputError(
            f"API key file {path} is writable by {'group and others' if info.st_mode & 0o002 else 'its group'} "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); restrict it: chmod go-w {path}"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"API key file {path} is not UTF-8 text (byte offset {err.start})") from None
    except OSError as err:
        raise InputError(f"API key file {path} cannot be read: {err.strerror or err}") from None
    keys = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
    )
    if not keys:
        raise InputError(f"API key file {path} holds no keys (one per line)")
    short = [i for i, key in enumerate(keys) if len(key) < 16]
    if short:
        raise InputError(
            f"API key file {path}: key {short[0] + 1} is shorter than 16 "
            "characters; use long random keys (e.g. `openssl rand -hex 32`)"
        )
    bad = [i for i, key in enumerate(keys) if not key.isascii() or not key.isprintable()]
    if bad:  # a header carries ASCII: such a key could never be presented
        raise InputError(f"API key file {path}: key {bad[0] + 1} holds non-ASCII or control characters")
    return keys
