"""One check for "this name stays inside its folder": artifact members, ONNX external data,
index blobs and dataset images all go through it, so the rule is written (and fixed) once."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

from lame_runtime.errors import IntegrityError


def contained_path(
    root: Path,
    relative: object,
    what: str,
    folder: str = "folder",
    error: Callable[[str], Exception] = IntegrityError,
    allow_dotdot: bool = True,
) -> Path:
    """``root / relative`` if it names something inside ``root``; else ``error(message)``.

    Refused: non-strings, empty names, absolute paths (POSIX or Windows), names that resolve
    outside ``root`` (through ``..`` or a symlink) and, with ``allow_dotdot=False``, any ``..``
    part at all (artifacts name their files plainly). ``folder`` names the folder's kind in
    the message ("artifact", "dataset").
    """
    if not isinstance(relative, str) or not relative.strip():
        raise error(f"{what}: file name must be a non-empty string, got {relative!r}")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or relative.startswith("\\"):
        raise error(
            f"{what}: absolute path {relative!r} is not allowed: it must be relative "
            f"to the {folder} folder {root}"
        )
    if not allow_dotdot and (".." in posix.parts or ".." in windows.parts):
        raise error(f"{what}: path {relative!r} escapes the {folder} folder ('..')")
    path = Path(root) / relative
    real_root, real = Path(root).resolve(), path.resolve()
    if real != real_root and real_root not in real.parents:
        raise error(
            f"{what}: {relative!r} resolves to {real}, which leads outside the {folder} "
            f"folder {real_root} ('..' or a symlink pointing out)"
        )
    return path
