"""Reading and validating saved indexes (``lame_runtime.retrieval.index``'s file format).

``<stem>.json`` holds the ids, payloads, config and ``content_sha256`` (the sha256 of that
content) and points at ``<stem>.<token>.npz`` by name and sha256 (version 2). Version 1 kept
``<stem>.npz`` beside the json with ``npz_sha256``. Every field is checked on load and every
problem raises an ``IndexFileError`` (or ``MissingFileError``) naming the file. What goes
in (ids, payloads, ``info``) is checked by ``check_id`` / ``check_storable`` before any change,
so every save can write it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lame_runtime.errors import IndexFileError, InputError, InputTypeError, MissingFileError
from lame_runtime.persist import check_npz, read_json

STORAGES = ("float32", "float16", "int8")
FORMAT = "lame-index"
VERSION = 2
READABLE_VERSIONS = (1, 2)
INDEX_STEM = "index"  # file names used when save/load is given a directory


def code_dtype(storage: str) -> np.dtype:
    return np.dtype({"float32": np.float32, "float16": np.float16, "int8": np.int8}[storage])


def index_files(path: str | Path, for_writing: bool = False) -> tuple[Path, Path]:
    """Map a directory or prefix to its (version-1 npz, json) pair.

    Version 2 saves name their npz in the json (``<stem>.<token>.npz``); the first path is
    where a version 1 save kept it.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"an index path must be a str or os.PathLike, got {type(path).__name__}")
    text = str(path)
    path = Path(path)
    if path.is_dir() or text.endswith(("/", os.sep)):
        if for_writing:
            path.mkdir(parents=True, exist_ok=True)
        return path / f"{INDEX_STEM}.npz", path / f"{INDEX_STEM}.json"
    if path.suffix in (".npz", ".json"):
        path = path.with_suffix("")
    if for_writing and not path.parent.is_dir():
        raise MissingFileError(f"directory not found: {path.parent}")
    return path.with_name(path.name + ".npz"), path.with_name(path.name + ".json")


def index_exists(path: str | Path) -> Path | None:
    """The json (or version-1 npz) of an index saved at ``path``, if there is one."""
    return next((p for p in reversed(index_files(path)) if p.exists()), None)


def content_sha256(content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_meta(json_path: Path) -> dict[str, Any]:
    def bad(problem: str) -> IndexFileError:
        return IndexFileError(f"{json_path}: {problem}; rebuild the index")

    meta = read_json(json_path, IndexFileError, what="index metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFileError(f'{json_path} is not a LaME index (no "format": "{FORMAT}")')
    if meta.get("version") not in READABLE_VERSIONS:
        raise IndexFileError(
            f"{json_path}: index version {meta.get('version')!r} is not "
            f"supported (this runtime reads {list(READABLE_VERSIONS)})"
        )
    missing = [key for key in ("dim", "storage", "ids", "payloads") if key not in meta]
    if missing:
        raise bad(f"lacks the field(s) {missing}")
    dim = meta["dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise bad(f"'dim' must be a positive integer, got {dim!r}")
    if meta["storage"] not in STORAGES:
        raise bad(f"'storage' must be one of {STORAGES}, got {meta['storage']!r}")
    ids, payloads = meta["ids"], meta["payloads"]
    if not isinstance(ids, list) or not isinstance(payloads, list):
        raise bad("'ids' and 'payloads' must be lists")
    not_str = next((i for i, item_id in enumerate(ids) if not isinstance(item_id, str)), None)
    if not_str is not None:
        raise bad(f"ids[{not_str}] is {ids[not_str]!r}, not a string")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or _add(seen, i))
        raise bad(f"lists duplicate ids (e.g. {duplicate!r})")
    if len(payloads) != len(ids):
        raise bad(f"has {len(payloads)} payloads for {len(ids)} ids")
    count = meta.setdefault("count", len(ids))
    if count != len(ids):
        raise bad(f"'count' is {count!r} but it lists {len(ids)} ids")
    if meta["version"] >= 2:
        if not isinstance(meta.get("info", {}), dict):
            raise bad("'info' must be an object")
        content = {
            key: meta.get(key)
            for key in ("format", "version", "dim", "storage", "count", "ids", "payloads", "info")
        }
        if meta.get("content_sha256") != content_sha256(content):
            raise bad("its content does not match its content_sha256 (edited or corrupt)")
    return meta


def read_arrays(npz_path: Path, storage: str, dim: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    expected = {"vectors", "scales"} if storage == "int8" else {"vectors"}
    headers = check_npz(npz_path, IndexFileError)  # shapes from the headers, nothing allocated
    if set(headers) == expected and headers["vectors"][0] != (count, dim):
        shape, dtype = headers["vectors"]
        raise IndexFileError(
            f"{npz_path} holds {dtype} {shape}, expected {code_dtype(storage)} "
            f"({count}, {dim}) (files from different saves?)"
        )
    try:
        with np.load(npz_path, allow_pickle=False) as arrays:
            if set(arrays.files) != expected:
                raise IndexFileError(
                    f"{npz_path} holds arrays {sorted(arrays.files)}, expected "
                    f"{sorted(expected)} for {storage} storage"
                )
            codes = arrays["vectors"]
            scales = arrays["scales"] if storage == "int8" else np.zeros(len(codes), np.float32)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        if isinstance(err, IndexFileError):
            raise
        raise IndexFileError(f"{npz_path} is not a readable npz file ({err}); rebuild the index") from err
    want = code_dtype(storage)
    if codes.dtype != want or codes.shape != (count, dim):
        raise IndexFileError(
            f"{npz_path} holds {codes.dtype} {codes.shape}, expected {want} ({count}, {dim})"
        )
    if storage != "int8" and not np.isfinite(codes).all():
        raise IndexFileError(f"{npz_path} holds NaN or infinite vectors")
    if storage == "int8" and (
        scales.dtype != np.float32
        or scales.shape != (count,)
        or not (np.isfinite(scales) & (scales > 0)).all()
    ):
        raise IndexFileError(
            f"{npz_path}: int8 scales must be {count} positive float32 "
            f"values, got {scales.dtype} {scales.shape}"
        )
    return codes, scales


def _add(seen: set[str], item: str) -> bool:
    """``seen.add(item)`` as an expression (False: ``item`` was new)."""
    seen.add(item)
    return False


MAX_PAYLOAD_DEPTH = 64  # nesting of a stored payload: far beyond real metadata, far below a stack


def check_storable(value: Any, where: str) -> None:
    """Raise unless ``value`` survives a save and a reload unchanged, and can be returned.

    Stored data must be JSON (objects with string keys, arrays, strings, finite numbers,
    booleans, null), every string valid Unicode (a lone surrogate cannot be written as UTF-8:
    the save, and every response carrying it, would fail after the add was acknowledged), and
    nested at most ``MAX_PAYLOAD_DEPTH`` deep. The first problem found is named."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, at, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            raise InputError(f"{at}: nested deeper than {MAX_PAYLOAD_DEPTH} levels")
        if isinstance(item, str):
            check_text(item, at)
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not np.isfinite(item):
                raise InputError(f"{at} is {item!r}: JSON holds finite numbers only")
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InputTypeError(
                        f"{at}: key {key!r} is a {type(key).__name__}; JSON object keys are strings"
                    )
                check_text(key, f"{at}: a key")
                stack.append((child, f"{at}[{ascii(key)}]", depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{at}[{i}]", depth + 1) for i, child in enumerate(item))
        else:
            raise InputTypeError(f"{at} is not JSON-serialisable: a {type(item).__name__}")


def check_text(text: str, where: str) -> None:
    """Raise ``InputError`` when ``text`` cannot be written as UTF-8 (a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(
            f"{where} is not valid Unicode: lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
        ) from None


def check_id(item_id: Any) -> None:
    """An id is a string that can be saved and returned (valid Unicode)."""
    if not isinstance(item_id, str):
        raise InputTypeError(f"ids must be strings, got {type(item_id).__name__} {item_id!r}")
    check_text(item_id, f"id {ascii(item_id)}")
