"""A corpus source as numbered shards, and the rows of one shard.

Sources: a folder of images (ids: paths relative to it, exactly as ``lame-search index
--images`` names them), a JSON-lines file (one object a line: ``id``, ``text`` and/or
``image``, any other keys are metadata), or Parquet (one file or a folder of ``*.parquet``;
columns ``id``, ``text`` and/or ``image`` -- a path string or the encoded bytes -- and any
other columns as metadata). One image per item: an item with a ``video`` (or a list of images)
is an error of that item here (``lame-search index --data`` embeds those with a
native-resolution model), never metadata silently left unembedded.

Shard identity is positional: shard ``k`` is the ``k``-th run of ``shard_size`` items in a
fixed order (sorted files; file order for lines and rows; a Parquet shard never spans two
files). The driver records a fingerprint of the source with the shards, so a rerun over a
changed source is refused instead of mixing two corpora under one set of shard numbers.

The driver only plans (lists files, counts lines and rows); a worker reads its shard's rows
with ``read_shard`` -- also where metadata comes from when the shard is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lame_runtime.errors import InputError, MissingFileError
from lame_runtime.retrieval.index_io import check_id, check_text

KINDS = ("images", "jsonl", "parquet")
CONTENT = ("id", "text", "image")  # the columns that are not metadata
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class Shard:
    number: int
    rows: int
    spec: dict[str, Any]  # JSON-able: what read_shard needs, on any node


@dataclass(frozen=True)
class Plan:
    kind: str
    path: str
    fingerprint: str
    total: int
    shards: tuple[Shard, ...]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "fingerprint": self.fingerprint, "total": self.total}


def plan_source(source: str | Path, shard_size: int, pattern: str = "*") -> Plan:
    """List ``source`` (kind from what it is: a folder of images, a .jsonl file, .parquet
    files) into shards of ``shard_size`` items."""
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise InputError(f"shard_size must be a positive integer, got {shard_size!r}")
    path = Path(source)
    if not path.exists():
        raise MissingFileError(f"corpus source not found: {path}")
    if path.is_file() and path.suffix.lower() in JSONL_SUFFIXES:
        return _plan_jsonl(path.resolve(), shard_size)
    if path.is_file() and path.suffix.lower() == ".parquet":
        return _plan_parquet(path.resolve(), [path.resolve()], shard_size)
    if path.is_dir():
        parquet = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if parquet:
            return _plan_parquet(path.resolve(), [p.resolve() for p in parquet], shard_size)
        return _plan_images(path, pattern, shard_size)
    raise InputError(
        f"corpus source {path} is neither a folder (images or .parquet files) nor a "
        f"{'/'.join(JSONL_SUFFIXES)} or .parquet file"
    )


def _runs(count: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def _plan_images(root: Path, pattern: str, shard_size: int) -> Plan:
    from lame_runtime.retrieval.indexing import image_items  # the listing lame-search index uses

    names = [item[0] for item in image_items(root, pattern)]
    base = str(root.resolve())
    digest = hashlib.sha256(json.dumps([pattern, names]).encode()).hexdigest()
    shards = tuple(
        Shard(n, stop - start, {"kind": "images", "root": base, "files": names[start:stop], "first": start})
        for n, (start, stop) in enumerate(_runs(len(names), shard_size))
    )
    return Plan("images", base, digest, len(names), shards)


def _plan_jsonl(path: Path, shard_size: int) -> Plan:
    """Byte ranges of runs of ``shard_size`` non-blank lines (blank lines are not items)."""
    digest = hashlib.sha256()
    # Only each shard's first item is remembered: 50 million lines plan in constant memory.
    firsts: list[tuple[int, int]] = []  # (byte offset, line number)
    offset = count = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            digest.update(line)
            if line.strip():
                if count % shard_size == 0:
                    firsts.append((offset, number))
                count += 1
            offset += len(line)
    if not count:
        raise InputError(f"{path} has no lines")
    shards = []
    for n, (start, first_line) in enumerate(firsts):
        spec = {
            "kind": "jsonl",
            "path": str(path),
            "start": start,
            "stop": firsts[n + 1][0] if n + 1 < len(firsts) else offset,
            "line": first_line,
            "first": n * shard_size,
        }
        shards.append(Shard(n, min(shard_size, count - n * shard_size), spec))
    return Plan("jsonl", str(path), digest.hexdigest(), count, tuple(shards))


def _plan_parquet(root: Path, files: list[Path], shard_size: int) -> Plan:
    pq = _parquet()
    digest = hashlib.sha256()
    shards: list[Shard] = []
    total = 0
    for file in files:
        try:
            meta = pq.ParquetFile(file).metadata
            names = set(meta.schema.names)
        except Exception as err:  # noqa: BLE001  (pyarrow's errors: ArrowInvalid, OSError, ...)
            raise InputError(f"cannot read Parquet file {file}: {err}") from err
        if "id" not in names or not names & {"text", "image"}:
            raise InputError(f"{file}: a corpus Parquet file needs an 'id' column and 'text' and/or 'image'")
        stat = file.stat()
        # Hashing every byte of a large Parquet corpus costs a full read; its size, mtime and
        # footer (row counts, schema, writer) change whenever its rows do.
        digest.update(json.dumps([str(file), stat.st_size, stat.st_mtime_ns, meta.num_rows]).encode())
        digest.update(str(meta.schema).encode())
        for start, stop in _runs(meta.num_rows, shard_size):
            spec = {
                "kind": "parquet",
                "path": str(file),
                "offset": start,
                "count": stop - start,
                "first": total,
            }
            shards.append(Shard(len(shards), stop - start, spec))
            total += stop - start
    if not total:
        raise InputError(f"{root} has no rows")
    return Plan("parquet", str(root), digest.hexdigest(), total, tuple(shards))


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise InputError("Parquet sources and output need pyarrow (pip install 'lame-embed[ray]')") from err
    return pq


# ----------------------------------------------------------------------------- reading
def read_shard(spec: dict[str, Any], images: bool = True) -> list[dict[str, Any]]:
    """The items of one shard, in order: ``{"position", "id", "text", "image", "error",
    "metadata"}``. ``image`` is an absolute path or bytes. A row that cannot be an item (bad
    JSON, no id, a text that is not a string) keeps its position and carries ``error``: it
    lands in the errors file, the job goes on. ``images=False`` (the driver, which needs the
    ids and metadata only) leaves a Parquet source's image column unread."""
    kind = spec.get("kind")
    if kind == "images":
        root = Path(spec["root"])
        return [
            _row(spec["first"] + i, name, None, str(root / name), {"path": str((root / name).resolve())})
            for i, name in enumerate(spec["files"])
        ]
    if kind == "jsonl":
        return _read_jsonl(spec)
    if kind == "parquet":
        return _read_parquet(spec, images)
    raise InputError(f"unknown shard kind {kind!r}")


def _row(position: int, item_id: Any, text: Any, image: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    error = None
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not item_id:
        error, item_id = f"id must be a non-empty string, got {item_id!r}", None
    elif text is not None and not isinstance(text, str):
        error = f"text must be a string, got {type(text).__name__}"
    elif image is not None and not isinstance(image, (str, bytes)):
        error = f"image must be a path or bytes, got {type(image).__name__}" + (
            " (several images per item: index them with `lame-search index --data`)"
            if isinstance(image, list)
            else ""
        )
    elif not (text or image):
        error = "the item has neither text nor image"
    else:  # what the shards and Qdrant will store must be writable (the index's own checks)
        try:
            check_id(item_id)
            for value, where in ((text, "text"), (image, "image path")):
                if isinstance(value, str):
                    check_text(value, where)
        except InputError as err:
            error = str(err)
    if error:
        text = image = None
    return {
        "position": position,
        "id": item_id,
        "text": text,
        "image": image,
        "error": error,
        "metadata": metadata,
    }


def _image_value(value: Any, folder: Path) -> Any:
    """A path relative to the source file's folder, an absolute path, bytes, or a
    ``{"bytes", "path"}`` struct (how Hugging Face datasets store images in Parquet)."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str) and value:
        return str(folder / value) if not Path(value).is_absolute() else value
    return value


def _read_jsonl(spec: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(spec["path"])
    with open(path, "rb") as handle:
        handle.seek(spec["start"])
        data = handle.read(spec["stop"] - spec["start"])
    rows, position = [], spec["first"]
    for number, line in enumerate(data.splitlines(), spec["line"]):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, UnicodeDecodeError) as err:
            value = err
        if not isinstance(value, dict):
            row = _row(position, None, None, None, {})
            row["error"] = f"{path.name}:{number}: not a JSON object ({value})"
        else:
            metadata = {k: v for k, v in value.items() if k not in CONTENT}
            row = _row(
                position,
                value.get("id"),
                value.get("text"),
                _image_value(value.get("image"), path.parent),
                metadata,
            )
            _refuse_video(row, value)
            if row["error"]:
                row["error"] = f"{path.name}:{number}: {row['error']}"
        rows.append(row)
        position += 1
    return rows


def parquet_metadata(spec: dict[str, Any]) -> Any:
    """A Parquet shard's metadata columns as Arrow (their types kept: an int16 stays int16),
    or None for the other kinds."""
    if spec.get("kind") != "parquet":
        return None
    table = _parquet_slice(spec, images=False)
    return table.select([n for n in table.column_names if n not in CONTENT])


def _parquet_slice(spec: dict[str, Any], images: bool = True) -> Any:
    """Only the row groups that overlap the shard are read (and, without ``images``, not the
    image column: encoded images are most of a catalogue's bytes)."""
    pq = _parquet()
    file = pq.ParquetFile(spec["path"])
    columns = None if images else [n for n in file.schema_arrow.names if n != "image"]
    start, count = spec["offset"], spec["count"]
    groups, first, seen = [], None, 0
    for g in range(file.metadata.num_row_groups):
        size = file.metadata.row_group(g).num_rows
        if seen + size > start and seen < start + count:
            groups.append(g)
            first = seen if first is None else first
        seen += size
    return file.read_row_groups(groups, columns=columns).slice(start - (first or 0), count)


def _read_parquet(spec: dict[str, Any], images: bool) -> list[dict[str, Any]]:
    table = _parquet_slice(spec, images)
    folder = Path(spec["path"]).parent
    rows = []
    for i, record in enumerate(table.to_pylist()):
        metadata = {k: v for k, v in record.items() if k not in CONTENT}
        image = _image_value(record.get("image"), folder)
        row = _row(spec["first"] + i, record.get("id"), record.get("text"), image, metadata)
        rows.append(_refuse_video(row, record))
    return rows


def _refuse_video(row: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    if value.get("video") is not None and not row["error"]:
        row["error"] = (
            "the item has a video: embed-corpus embeds texts and single images (index videos "
            "with `lame-search index --data` and a native-resolution model)"
        )
        row["text"] = row["image"] = None
    return row
