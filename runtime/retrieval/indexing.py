"""Build an index from a list of items, with checkpoints, ``--resume`` and ``--skip-bad``.

Used by ``lame-search index``. Batches stream through ``Embedder.pipeline`` (images decode in a
thread pool while the model runs on the previous batch); the target is an exact ``Index``, a
FAISS ``AnnIndex`` (``BuildOptions.ann``) or a Qdrant collection (``build_qdrant``). The resume
state is deliberately small and lives *in the index
it describes* (``Index.info["build"]``, saved atomically with the vectors), so the two can
never disagree::

    {"source": ..., "kind": "images"|"data", "pattern": ..., "model": <manifest sha256>,
     "precision": ..., "storage": ..., "batch_size": B, "total": N, "dimensions": d|None,
     "next": P,            # items[:P] are done (embedded or skipped); P is a multiple of B
     "skipped": S, "complete": bool}

Items are processed in a fixed order (sorted files, or eval.jsonl order) in batches that start
at multiples of B, so a resumed run embeds exactly the batches an uninterrupted one would and
its index is identical. Bad items (``--skip-bad``) go to ``<index>.skipped.jsonl`` beside the
index json, one JSON object per line: ``{"position", "id", "image", "error"}``; the report is
written before each checkpoint of the index, so it always covers ``items[:next]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from lame_runtime.errors import InputError, InputTypeError, IntegrityError, MissingFileError
from lame_runtime.inputs.preprocess import format_query
from lame_runtime.persist import atomic_write_text, parse_json, sha256, writer_lock
from lame_runtime.retrieval.index import Index
from lame_runtime.retrieval.index_io import check_id, check_storable, index_exists, index_files
from lame_runtime.retrieval.visual_items import check_fixed, native_prepared

BUILD_KEY = "build"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def image_items(root: Path, pattern: str = "*") -> list[tuple[str, dict[str, Any], str | None, str | None]]:
    """Every image under ``root`` matching ``pattern`` (recursive, sorted):
    (id, payload, text, image)."""
    if not root.is_dir():
        raise MissingFileError(f"image directory not found: {root}")
    base = root.resolve()
    files = sorted(
        (p for p in root.rglob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    outside = [p for p in files if base not in p.resolve().parents]
    if outside:  # a symlink inside the folder must not pull in files from elsewhere
        raise IntegrityError(
            f"{outside[0]} links outside the image directory {root} (to "
            f"{outside[0].resolve()}); remove the link or index its target"
        )
    if not files:
        raise InputError(
            f"no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images matching {pattern!r} in {root}"
        )
    return [(p.relative_to(root).as_posix(), {"path": str(p.resolve())}, None, str(p)) for p in files]


REPORT_SUFFIX = ".skipped.jsonl"
ITEM_ERRORS = (InputError, InputTypeError, MissingFileError)
# (id, payload, text, image): the image a path, or {"image": [paths], "video": path} for a
# native-resolution model (lame_runtime.retrieval.visual_items)
Item = tuple[Any, Any, Any, Any]


@dataclass
class BuildOptions:
    storage: str = "float32"
    batch_size: int = 32
    checkpoint_every: int = 1024  # items between checkpoints (rounded up to whole batches)
    # A checkpoint rewrites the whole index, so the interval also grows with the index (at
    # least this fraction of the items done): total bytes written stay within (1 + 1/growth)
    # of the final index instead of growing with its square, and a crash loses at most about
    # growth / (1 + growth) of the work done.
    checkpoint_growth: float = 0.1
    skip_bad: bool = False
    resume: bool = False
    force: bool = False
    ann: Any = None  # a lame_runtime.retrieval.ann.AnnConfig: build a FAISS AnnIndex instead of an Index
    # A Matryoshka model's size to store (Embedder.dimensions); None: the full embedding.
    # Queries against the index are cut to the index's dim (lame-search query does it).
    dimensions: int | None = None


def report_path(out: str | Path) -> Path:
    json_path = index_files(out)[1]
    return json_path.with_name(json_path.stem + REPORT_SUFFIX)


def build_index(
    embedder: Any,
    items: Sequence[Item],
    out: str | Path,
    source: dict[str, Any],
    options: BuildOptions,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """Embed ``items`` into the index at ``out``; returns a summary. ``source`` names where
    the items came from (kind, path, pattern): a resume must match it.

    One writer per ``out``: a second build of the same index, in any process, is refused with
    ``BusyError`` naming the holder (``persist.writer_lock``) instead of racing it."""
    check_items(items)
    with writer_lock(index_files(out)[1]):
        return _build(embedder, items, out, source, options, progress)


def check_items(items: Sequence[Item]) -> None:
    """Every id and payload that will be stored, checked before anything is embedded or
    written (``Index.add`` checks again, per batch): a file name that is not valid Unicode or
    a metadata value JSON cannot hold fails the build at once, naming the item, not after
    hours of embedding at a save."""
    for position, item in enumerate(items):
        try:
            check_id(item[0])
            check_storable(item[1], f"payload of {ascii(item[0])}")
        except (InputError, InputTypeError) as err:
            raise type(err)(f"items[{position}]: {err}") from None


def _build(
    embedder: Any,
    items: Sequence[Item],
    out: str | Path,
    source: dict[str, Any],
    options: BuildOptions,
    progress: Callable[[int], None],
) -> dict[str, Any]:
    state = {
        **source,
        "model": sha256(Path(embedder.artifact.path) / "lame_artifact.json"),
        "precision": embedder.precision,
        "storage": options.storage,
        "batch_size": options.batch_size,
        "total": len(items),
        "next": 0,
        "skipped": 0,
        "complete": False,
        "ann": _ann_state(options),
    }
    size = embedder.check_dimensions(options.dimensions)
    if size != embedder.dim:  # absent for full-size builds, however asked (older ones resume)
        state["dimensions"] = size
    index, skipped = _start(embedder, items, out, state, options, size)
    progress(state["next"])
    since = 0
    for start, chunk, vectors, ids, bad in embed_batches(
        embedder, items, state["next"], options.batch_size, options.skip_bad, size
    ):
        if ids:
            payloads = {item[0]: item[1] for item in chunk}
            index.add(vectors, ids, [payloads[i] for i in ids])
        skipped.extend(bad)
        state["next"], state["skipped"] = start + len(chunk), len(skipped)
        since += len(chunk)
        progress(len(chunk))
        if checkpoint_due(since, state["next"], options) and state["next"] < len(items):
            _checkpoint(index, out, state, skipped)
            since = 0
    state["complete"] = True
    npz_path, json_path = _checkpoint(index, out, state, skipped)
    return {
        "index": str(json_path.with_suffix("")),
        "count": len(index),
        "dim": index.dim,
        "storage": options.storage,
        "precision": embedder.precision,
        "skipped": len(skipped),
        "report": str(report_path(out)) if skipped else None,
        "files": [str(npz_path), str(json_path)],
    }


def checkpoint_due(since: int, done: int, options: BuildOptions) -> bool:
    """True when ``since`` items were processed since the last checkpoint and that is at least
    ``checkpoint_every`` and ``checkpoint_growth`` times the ``done`` items."""
    return since >= max(options.checkpoint_every, options.checkpoint_growth * done)


def _ann_state(options: BuildOptions) -> dict[str, Any] | None:
    from dataclasses import asdict

    return None if options.ann is None else asdict(options.ann)


def _start(
    embedder: Any,
    items: Sequence[Item],
    out: str | Path,
    state: dict[str, Any],
    options: BuildOptions,
    size: int,
) -> tuple[Any, list[dict[str, Any]]]:
    existing = index_exists(out)
    if existing is None or options.force:
        if options.ann is not None:
            from lame_runtime.retrieval.ann import AnnIndex

            return AnnIndex(size, options.ann), []
        return Index(size, storage=options.storage), []
    if not options.resume:
        raise FileExistsError(
            f"{existing} exists; pass --resume to continue building it or --force to overwrite it"
        )
    from lame_runtime.retrieval.ann import load_any

    index = load_any(out)
    done = index.info.get(BUILD_KEY)
    if not isinstance(done, dict):
        raise InputError(
            f"{existing} was not built by `lame-search index` (no build state); pass --force to overwrite it"
        )
    for key in (
        "kind",
        "source",
        "pattern",
        "model",
        "precision",
        "storage",
        "batch_size",
        "total",
        "ann",
        "dimensions",
    ):
        # .get: "dimensions" is absent from full-size builds (and from older indexes).
        if done.get(key) != state.get(key):
            raise InputError(
                f"cannot resume {existing}: its {key} was {done.get(key)!r}, this "
                f"run's is {state.get(key)!r} (pass --force to start over)"
            )
    position = done.get("next")
    if not isinstance(position, int) or not 0 <= position <= len(items):
        raise InputError(f"cannot resume {existing}: bad build state 'next'={position!r}")
    skipped = [entry for entry in _read_report(report_path(out)) if entry["position"] < position]
    bad_ids = {entry["id"] for entry in skipped}
    expected = [item[0] for item in items[:position] if item[0] not in bad_ids]
    if index.ids != expected:
        raise InputError(
            f"cannot resume {existing}: the items it holds are not the first "
            f"{position} of {state['source']} (the source changed?); pass --force"
        )
    state["next"] = position
    return index, skipped


def embed_batches(
    embedder: Any, items: Sequence[Item], start: int, batch_size: int, skip_bad: bool, size: int | None = None
) -> Iterator[tuple[int, Sequence[Item], Any, list[Any], list[dict[str, Any]]]]:
    """Yield ``(start, chunk, vectors, ids, skipped)`` per batch of ``items[start:]``.

    Images of the next batches decode in ``embedder.pipeline``'s thread pool while the model
    runs on this one (``_embed``); a native-resolution model's batches (several images per
    item, videos) are built serially (``visual_items.native_prepared``). One bad item fails the run unless ``skip_bad``: then the
    batch's good items are embedded together (the same batch an uninterrupted run embeds) and
    the bad ones come back as skipped-item records.
    """
    instruction = embedder.artifact.instruction("document")
    rows = ((item[0], format_query(item[2], instruction), item[3]) for item in items[start:])
    stream: Iterator[Any]
    if embedder.preprocessor.image.native:  # several images per item, videos
        stream = native_prepared(embedder.preprocessor, rows, batch_size, skip_bad, start)
    else:
        check_fixed(items)
        stream = embedder.pipeline.prepared(rows, batch_size, skip_bad=skip_bad, start=start)
    while True:
        try:
            prepared = next(stream, None)
        except ITEM_ERRORS as err:
            raise type(err)(f"{err} (pass --skip-bad to skip bad items)") from err
        if prepared is None:
            return
        chunk = items[prepared.start : prepared.start + batch_size]
        vectors, ids, bad = _embed(embedder, prepared, size)
        yield prepared.start, chunk, vectors, ids, bad


def _embed(
    embedder: Any, prepared: Any, size: int | None = None
) -> tuple[Any, list[Any], list[dict[str, Any]]]:
    """One prepared batch -> (unit vectors [of the leading ``size`` components] or None,
    their ids, skipped-item records)."""
    from lame_runtime.embedder import unit_prefix

    vectors = unit_prefix(embedder.infer(prepared.feed), size) if prepared.feed is not None else None
    bad = [
        {"position": position, "id": item_id, "image": image, "error": str(err)}
        for position, item_id, image, err in prepared.errors
    ]
    return vectors, prepared.ids, bad


def _checkpoint(
    index: Index, out: str | Path, state: dict[str, Any], skipped: list[dict[str, Any]]
) -> tuple[Path, Path]:
    # The report first: a kill between the two writes leaves a report covering at least the
    # index's items[:next] (extra lines past ``next`` are dropped on resume).
    report = report_path(out)
    if skipped or report.exists():
        report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(report, "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in skipped))
    return index.save(out, info={**index.info, BUILD_KEY: dict(state)})


def _read_report(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        entry = parse_json(line, f"{path}:{number}", InputError)
        if not isinstance(entry, dict) or not isinstance(entry.get("position"), int):
            raise InputError(f"{path}:{number}: not a skipped-item record")
        entries.append(entry)
    return entries


def build_qdrant(
    embedder: Any,
    items: Sequence[Item],
    store: Any,
    options: BuildOptions,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, Any]:
    """Embed ``items`` into a ``lame_runtime.retrieval.qdrant_store.QdrantStore`` (batched upserts).

    Point ids are derived from the item ids, so running again re-upserts the same points
    (idempotent) instead of duplicating them. Skipped items are returned in the summary and,
    for a local folder, written to ``<folder>/<collection>.skipped.jsonl``.
    """
    check_items(items)
    skipped: list[dict[str, Any]] = []
    size = embedder.check_dimensions(options.dimensions)
    if store.dim != size:
        raise InputError(
            f"Qdrant collection {store.collection!r} holds {store.dim}-dim vectors, "
            f"this build makes {size}-dim ones"
        )
    for _, chunk, vectors, ids, bad in embed_batches(
        embedder, items, 0, options.batch_size, options.skip_bad, size
    ):
        if ids:
            payloads = {item[0]: item[1] for item in chunk}
            store.add(vectors, ids, [payloads[i] for i in ids])
        skipped.extend(bad)
        progress(len(chunk))
    report = None
    if skipped and Path(store.location).is_dir():
        report = Path(store.location) / f"{store.collection}{REPORT_SUFFIX}"
        atomic_write_text(report, "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in skipped))
    return {
        "qdrant": store.location,
        "collection": store.collection,
        "count": len(store),
        "dim": store.dim,
        "precision": embedder.precision,
        "skipped": len(skipped),
        "report": str(report) if report else None,
    }
