"""The one persistence helper: checkpoints, artifacts, indexes and calibration files.

Rules every writer follows, so that a kill at any instant loses nothing:

* a file is written to a temporary name in the same folder, fsynced, then ``os.replace``d;
* a folder is built as ``.NAME.tmp`` and swapped in (``NAME`` -> ``.NAME.old``, tmp -> ``NAME``);
  at every instant ``NAME`` or ``.NAME.old`` is complete, and ``recover_dir`` brings it back;
* several files that must agree are written under per-save names (``stem.<token>.npz``) and a
  small metadata file, replaced last, points at them with their sha256: no two-file swap can
  tear, and files no longer pointed at are deleted only after the pointer is in place;
* staging is removed on every error path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable

from lame_runtime.errors import BusyError, InputError, IntegrityError, LameError, MissingFileError

Writer = Callable[[BinaryIO], None]


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` sets it, which races with
    other threads creating files); falls back to setting it back at once where /proc lacks it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 minus the umask (0o644 under the usual 022).

    Every file a writer here leaves behind gets it, whoever created it: ``tempfile`` creates
    0600 files, and onnx (>= 1.19) writes external ``.data`` files 0600, so without this an
    artifact exported by one user could not be read by the service account that serves it."""
    return 0o666 & ~current_umask()


def normalize_modes(root: str | Path) -> None:
    """Give every regular file under ``root`` the default mode (see ``default_file_mode``)."""
    mode = default_file_mode()
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path) and (os.stat(path).st_mode & 0o777) != mode:
                os.chmod(path, mode)


def atomic_write_file(path: str | Path, write: Writer, mode: int | None = None) -> Path:
    """Write ``path`` through ``write(handle)`` on a temp file + fsync + rename.
    ``mode``: default ``default_file_mode()`` (what a plain ``open`` would give)."""
    path = Path(path)
    mode = default_file_mode() if mode is None else mode
    handle = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            write(handle)  # type: ignore[arg-type]  # the temp-file wrapper is a binary file object
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, mode)  # temp files are created 0600
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(handle: BinaryIO) -> None:
        handle.write(data)

    return atomic_write_file(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=indent, ensure_ascii=False))


def fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def staging_paths(final: Path) -> tuple[Path, Path]:
    """(``.NAME.tmp``, ``.NAME.old``) beside ``final``."""
    return final.parent / f".{final.name}.tmp", final.parent / f".{final.name}.old"


def check_replaceable(path: str | Path, marker: str) -> None:
    """Raise unless ``path`` is absent, an empty folder, or a folder holding ``marker``:
    pointing ``--out`` at a folder of other files must never delete them."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir() and (not any(path.iterdir()) or (path / marker).is_file()):
        return
    raise FileExistsError(
        f"{path} exists and is not a LaME output (no {marker}); refusing to "
        "replace it: choose another directory"
    )


def atomic_write_dir(final: str | Path, write: Callable[[Path], None], marker: str) -> Path:
    """Build a folder with ``write(staging)`` and swap it in; staging is removed on any error.

    An existing ``final`` is replaced only if it is ours (see ``check_replaceable``).
    """
    final = Path(final)
    check_replaceable(final, marker)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)  # finish a swap an earlier kill interrupted before touching anything
    tmp, old = staging_paths(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(f"internal error: the writer of {final} did not write {marker}")
        normalize_modes(tmp)  # one mode for every file, whichever library wrote it
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover_dir(final: str | Path) -> Path | None:
    """The complete folder at ``final``, repairing an interrupted swap; None if there is none.

    A kill between the two renames leaves only ``.NAME.old`` (complete): it is renamed back.
    Where the folder is read-only the old copy is used in place, with a warning.
    """
    final = Path(final)
    tmp, old = staging_paths(final)
    if final.is_dir():
        if old.exists():  # killed after the swap, before the old copy was removed
            shutil.rmtree(old, ignore_errors=True)
        return final
    if old.is_dir():
        try:
            old.rename(final)
            fsync_dir(final.parent)
            warnings.warn(
                f"{final} was missing after an interrupted save; restored the previous complete version",
                RuntimeWarning,
                stacklevel=2,
            )
            return final
        except OSError:
            warnings.warn(
                f"{final} is missing but {old} is complete (interrupted save); using it",
                RuntimeWarning,
                stacklevel=2,
            )
            return old
    return None


def remove_staging(final: str | Path) -> None:
    """Delete a leftover ``.NAME.tmp`` (an interrupted build): never a complete version."""
    tmp, _ = staging_paths(Path(final))
    shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------- pointer + versioned files
def save_versioned(meta_path: str | Path, blobs: dict[str, Writer], meta: dict[str, Any]) -> dict[str, Any]:
    """Write each blob as ``<stem>.<token>.<key>``, then ``meta_path`` (JSON) pointing at them.

    ``meta["files"][key] = {"path", "sha256", "bytes"}`` is filled in. Blobs of earlier saves
    are deleted only after the new metadata is in place, so the metadata on disk always
    describes a complete set. Returns the metadata written.
    """
    meta_path = Path(meta_path)
    folder, stem = meta_path.parent, meta_path.stem
    token = uuid.uuid4().hex[:12]
    files: dict[str, dict[str, Any]] = {}
    written: list[Path] = []
    try:
        for key, write in blobs.items():
            path = folder / f"{stem}.{token}.{key}"
            atomic_write_file(path, write)
            written.append(path)
            files[key] = {"path": path.name, "sha256": sha256(path), "bytes": path.stat().st_size}
        meta = {**meta, "files": files}
        atomic_write_json(meta_path, meta, indent=None)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    keep = {entry["path"] for entry in files.values()}
    for key in blobs:
        for stale in folder.glob(f"{stem}.*.{key}"):
            if stale.name not in keep and _is_token_name(stale.name, stem, key):
                stale.unlink(missing_ok=True)
    return meta


def _is_token_name(name: str, stem: str, key: str) -> bool:
    middle = name[len(stem) + 1 : -(len(key) + 1)]
    return len(middle) == 12 and all(c in "0123456789abcdef" for c in middle)


def versioned_file(meta_path: str | Path, meta: dict[str, Any], key: str, verify: bool = True) -> Path:
    """The blob ``key`` that ``meta`` (read from ``meta_path``) points at, hash-checked.

    The name must be a plain file name in the same folder: a metadata file cannot point a
    reader outside its folder.
    """
    meta_path = Path(meta_path)
    entry = (meta.get("files") or {}).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise MissingFileError(f"{meta_path} does not name its {key!r} file")
    name: str = entry["path"]
    if Path(name).name != name or name in ("", ".", ".."):
        raise IntegrityError(f"{meta_path} points outside its folder ({name!r})")
    path = meta_path.parent / name
    if not path.is_file():
        raise MissingFileError(f"{path}, named by {meta_path}, is missing")
    if verify and sha256(path) != entry.get("sha256"):
        raise IntegrityError(f"{path} does not match the sha256 in {meta_path}: corrupt or replaced")
    return path


# ------------------------------------------------------------------------------ readers
def parse_json(text: str, where: str, error: type[LameError] = InputError) -> Any:
    """``json.loads`` with every way a document can be bad (not JSON, nested deeper than the
    interpreter's recursion limit, an integer of more than 4,300 digits, a key given twice in
    one object) raised as ``error`` naming ``where`` (a path, or ``path:line``). Duplicate keys
    are refused because ``json`` would silently keep the last one: a hand-edited manifest whose
    second ``embedding_dim`` wins is a misread, not a choice."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as dup:
        raise error(f"{where}: key {dup.args[0]!r} appears twice in one JSON object") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to read") from None
    except ValueError as err:  # JSONDecodeError, and int-string conversion limits
        raise error(f"{where} is not valid JSON: {err}") from err


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def read_json(
    path: str | Path, error: type[LameError] = InputError, kind: type | None = None, what: str = ""
) -> Any:
    """One JSON file, read at the boundary: a missing file raises ``MissingFileError``;
    unreadable, not UTF-8, not JSON, too deep, or (with ``kind``) not a ``kind`` raises
    ``error`` naming the path. ``what`` names the file's role in the messages."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{label} not found") from None
    except UnicodeDecodeError as err:
        raise error(f"{label} is not UTF-8 text: {err}") from None
    except OSError as err:
        raise error(f"cannot read {label}: {err.strerror or err}") from err
    value = parse_json(text, label, error)
    if kind is not None and not isinstance(value, kind):
        raise error(f"{label} must hold a JSON {_json_kind(kind)}, got {_json_kind(type(value))}")
    return value


def _json_kind(kind: type) -> str:
    names: dict[type, str] = {dict: "object", list: "array", str: "string"}
    return names.get(kind, kind.__name__)


# Deflate cannot expand data by more than about 1032:1; a member whose header claims more
# than that is lying about its shape (numpy would try to allocate the claimed size).
MAX_DEFLATE_RATIO = 1032


def check_npz(path: str | Path, error: type[LameError] = InputError) -> dict[str, tuple[Any, ...]]:
    """Read the headers of every array in an ``.npz`` without loading the data, and raise
    ``error`` naming the file for anything that is not a plain array archive: not a zip,
    pickled (object) arrays, or a header claiming more bytes than the member holds. Returns
    {name: (shape, dtype)}. Call before ``np.load`` so a crafted header cannot make numpy
    allocate an absurd array."""
    import zipfile

    import numpy as np

    path = Path(path)
    out: dict[str, tuple[Any, ...]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = header(member, max_header_size=10_000)
                    offset = member.tell()
                if dtype.hasobject:
                    raise error(f"{path}: array {name!r} holds Python objects (pickle); refused")
                claimed = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
                stored = info.file_size - offset
                bound = info.compress_size * MAX_DEFLATE_RATIO + 1024
                if claimed != stored or claimed > bound:
                    raise error(
                        f"{path}: array {name!r} claims shape {tuple(shape)} "
                        f"({claimed:,} bytes) but holds {max(stored, 0):,}: corrupt file"
                    )
                out[name] = (tuple(shape), dtype)
    except LameError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as err:
        raise error(f"{path} is not a readable npz file ({err})") from err
    return out


# -------------------------------------------------------------------------- writer lock
class writer_lock:
    """One writer per output: ``with writer_lock(out): ...`` takes an exclusive, non-blocking
    ``flock`` on ``<out>.lock`` (beside the output, so it also covers a folder that is being
    swapped in). A second writer gets ``BusyError`` naming the holder's pid and command; the
    lock is released when the holder exits, however it exits (the kernel drops it), so a
    killed writer never leaves a stale lock. The lock file itself is left in place: deleting
    it would let a third writer lock a new file while the second holds the old one."""

    def __init__(self, target: str | Path):
        target = Path(target)
        self.path = target.parent / f".{target.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> writer_lock:
        import fcntl
        import sys

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise BusyError(
                f"{self.path.parent / self.path.name[1:-5]} is being written by "
                f"another process ({holder}); wait for it to finish"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "pid unknown"
    except OSError:
        return "pid unknown"
