"""Converters from external benchmark layouts into the LaME eval format (``eval.jsonl``).

Both converters validate every input row before writing anything, copy the images and videos
they use to ``OUT/images/<path below the image root>`` (so the dataset is self-contained and
rows hold paths relative to OUT, as the loader expects) and replace ``OUT/eval.jsonl``
atomically.

**MMEB-v2** (``convert_mmeb``): a ``.jsonl`` file, or a ``.json`` array, of rows::

    {"qry_inst"?: str, "qry_text"?: str, "qry_img_path"?: str, "qry_video_path"?: str,
     "tgt_text"?: [str, ...], "tgt_img_path"?: [str, ...], "tgt_video_path"?: [str, ...]}

The first target is the positive.  Paths are relative to ``image_root``; ``""`` or ``null``
means none.  A video path names a video file or a folder of frame files (MMEB-v2's video
tasks ship frames extracted per video, ``<root>/<task>/<video id>/*.jpg``); video keys are
read with ``family="video"`` only.  Image and video placeholder tokens (``<|image_1|>``,
``<image>``, ``<|video_pad|>``, ``<video>``) are removed from texts.  Family ``image`` and
``video`` tasks report hit@1, ``visdoc`` tasks linear NDCG@5.

**MRMR / BEIR** (``convert_mrmr``): a directory with ``queries.jsonl``
(``{"id"|"_id", "text"?, "image"?: str | [str, ...], "instruction"?, "candidates"?: [doc id]}``),
``corpus.jsonl`` (``{"id"|"_id", "title"?, "text"?, "image"?}``) and ``qrels.jsonl``
(``{"query_id", "doc_id", "score"}``) or BEIR's ``qrels.tsv`` / ``qrels/test.tsv``
(``query-id<TAB>corpus-id<TAB>score``, header optional).  A query's candidates are its
``candidates`` list, else the whole corpus; gains come from the qrels (absent: 0).  Tasks
report NDCG@10.  An interleaved query or document keeps all its images, in order (an image
list, read at native resolution); queries without a relevant candidate are skipped, as BEIR
does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

from lame.data.dataset import EVAL_FILE, DatasetError, _read_objects
from lame_runtime.inputs.native import FRAME_SUFFIXES

FAMILY_METRIC = {"image": "hit@1", "visdoc": "ndcg@5", "video": "hit@1"}
MRMR_METRIC = "ndcg@10"
# VLM2Vec-style placeholders mark where an image sits in the prompt; our Item carries the
# image separately, so the token would only be noise to the tokenizer.
PLACEHOLDER = re.compile(r"(?:<\|(?:image|video)(?:_\d+|_pad)?\|>|<image>|<video>)\s*")
QRELS_FILES = ("qrels.jsonl", "qrels.tsv", "qrels/test.tsv")


class _Images:
    """Validates image and video paths below a root and remembers what to copy into OUT/images."""

    def __init__(self, root: Path):
        self.root = root
        self.pending: dict[str, Path] = {}  # image path relative to OUT -> source file
        self.videos: dict[str, Path] = {}  # video path relative to OUT -> file or frame folder

    def add(self, relative: str, where: str, field: str) -> str:
        source, dest = self._locate(relative, where, field)
        if dest not in self.pending:
            if not source.is_file():
                raise DatasetError(f"{where}: {field} image not found: {relative} (looked for {source})")
            self.pending[dest] = source
        return dest

    def add_video(self, relative: str, where: str, field: str) -> str:
        source, dest = self._locate(relative, where, field)
        if dest not in self.videos:
            if source.is_dir():
                if not _frames(source):
                    raise DatasetError(
                        f"{where}: {field} folder holds no frame files ({', '.join(FRAME_SUFFIXES)}): "
                        f"{relative}"
                    )
            elif not source.is_file():
                raise DatasetError(
                    f"{where}: {field} video file or folder not found: {relative} (looked for {source})"
                )
            self.videos[dest] = source
        return dest

    def _locate(self, relative: str, where: str, field: str) -> tuple[Path, str]:
        norm = os.path.normpath(relative)
        # Copies keep their path below the root; a path escaping it would escape OUT too.
        if os.path.isabs(norm) or norm.split(os.sep)[0] == "..":
            raise DatasetError(f"{where}: {field} must be relative to the image root, got {relative!r}")
        return self.root / norm, Path("images", norm).as_posix()

    def copy_to(self, out_dir: Path) -> None:
        files = dict(self.pending)
        for dest, source in self.videos.items():
            if source.is_dir():  # a folder of frames: its frame files, nothing else
                files.update({f"{dest}/{frame.name}": frame for frame in _frames(source)})
            else:
                files[dest] = source
        for dest, source in files.items():
            target = out_dir / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)


def _frames(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())


# ------------------------------------------------------------------ reading


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, object) per row of a JSON-lines file or a JSON array file."""
    if path.suffix != ".json":
        for number, raw in _read_objects(path):
            yield f"{path.name}:{number}", raw
        return
    if not path.is_file():
        raise DatasetError(f"{path.name}: file not found in {path.parent}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path.name}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise DatasetError(f"{path.name}: JSON nested too deeply to read") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path.name}: invalid JSON: {exc}") from None
    if not isinstance(rows, list) or not rows:
        raise DatasetError(f"{path.name}: expected a non-empty JSON array of rows")
    for index, raw in enumerate(rows):
        if not isinstance(raw, dict):
            raise DatasetError(f"{path.name}[{index}]: row must be a JSON object")
        yield f"{path.name}[{index}]", raw


def _string(raw: dict, key: str, where: str) -> str | None:
    """A string field; missing, null or empty -> None."""
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise DatasetError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return value or None


def _clean(text: str | None) -> str | None:
    return (PLACEHOLDER.sub("", text).strip() or None) if text else None


def _text(raw: dict, key: str, where: str) -> str | None:
    """A text field with image placeholders stripped; None when nothing is left."""
    return _clean(_string(raw, key, where))


def _str_list(raw: dict, key: str, where: str) -> list[str | None] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
        raise DatasetError(f"{where}: '{key}' must be an array of strings")
    return value


def _item(
    text: str | None,
    image: str | list[str] | None,
    images: _Images,
    where: str,
    field: str,
    video: str | None = None,
) -> dict:
    """An eval item; ``image`` one path or several (kept in order, a list when more than one)."""
    item: dict[str, Any] = {}
    if text:
        item["text"] = text
    paths = [path for path in ([image] if isinstance(image, str) else image or []) if path]
    if paths:
        added = [images.add(path, where, field) for path in paths]
        item["image"] = added[0] if len(added) == 1 else added
    if video:
        item["video"] = images.add_video(video, where, field)
    if not item:
        raise DatasetError(f"{where}: {field} has neither text, image nor video")
    return item


# ------------------------------------------------------------------ writing


def _write(
    out_dir: Path, rows: list[dict], images: _Images, task: str, append: bool, overwrite: bool
) -> dict[str, Any]:
    """Copy images, then replace OUT/eval.jsonl atomically (old rows kept with ``append``)."""
    path = out_dir / EVAL_FILE
    old = ""
    if path.exists():
        if not (append or overwrite):
            raise FileExistsError(f"{path} exists; pass --append to add a task or --overwrite to replace it")
        if append:
            old = path.read_text(encoding="utf-8")
            if any(json.loads(line).get("task") == task for line in old.splitlines() if line):
                raise ValueError(f"{path} already holds task '{task}'; pick another --task")
            old += "" if old.endswith("\n") or not old else "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    images.copy_to(out_dir)
    tmp = path.with_name(EVAL_FILE + ".tmp")
    tmp.write_text(old + "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)
    summary = {"out": str(out_dir), "task": task, "rows": len(rows), "images": len(images.pending)}
    return {**summary, "videos": len(images.videos)} if images.videos else summary


# ------------------------------------------------------------------ MMEB-v2


def convert_mmeb(
    path: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    task: str | None = None,
    family: str = "image",
    append: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert one MMEB-v2 task file; returns a summary (out, task, rows, images, warnings)."""
    if family not in FAMILY_METRIC:
        raise ValueError(f"family must be one of {', '.join(FAMILY_METRIC)}, got {family!r}")
    path = Path(path)
    task = task or path.stem
    images = _Images(Path(image_root))
    video = family == "video"
    rows = [
        _mmeb_row(raw, where, images, task, FAMILY_METRIC[family], video) for where, raw in _records(path)
    ]
    return {**_write(Path(out_dir), rows, images, task, append, overwrite), "warnings": []}


def _mmeb_row(raw: dict, where: str, images: _Images, task: str, metric: str, video: bool = False) -> dict:
    query_keys = ("qry_text", "qry_img_path", "qry_video_path") if video else ("qry_text", "qry_img_path")
    target_keys = ("tgt_text", "tgt_img_path", "tgt_video_path") if video else ("tgt_text", "tgt_img_path")
    if not video:
        found = [key for key in ("qry_video_path", "tgt_video_path") if raw.get(key)]
        if found:
            raise DatasetError(f"{where}: '{found[0]}' is a video task's key; convert it with --family video")
    if not any(key in raw for key in query_keys):
        raise DatasetError(f"{where}: missing {_either(query_keys)} (need one)")
    query = _item(
        _text(raw, "qry_text", where),
        _string(raw, "qry_img_path", where),
        images,
        where,
        "/".join(query_keys),
        _string(raw, "qry_video_path", where) if video else None,
    )
    lists = {key: _str_list(raw, key, where) for key in target_keys}
    given = {key: value for key, value in lists.items() if value is not None}
    if not given:
        raise DatasetError(f"{where}: missing {_either(target_keys)} (need one)")
    lengths = {len(value) for value in given.values()}
    if len(lengths) > 1:
        counts = " but ".join(f"'{key}' has {len(value)} entries" for key, value in given.items())
        raise DatasetError(f"{where}: {counts}")
    count = lengths.pop()
    if count < 2:
        raise DatasetError(f"{where}: needs at least 2 targets (the positive first), got {count}")
    texts, paths, clips = (
        lists.get(key) or [None] * count for key in ("tgt_text", "tgt_img_path", "tgt_video_path")
    )
    candidates = [
        _item(_clean(t), p, images, where, "/".join(f"{key}[{i}]" for key in target_keys), v)
        for i, (t, p, v) in enumerate(zip(texts, paths, clips))
    ]
    row = {"query": query, "candidates": candidates, "label": 0, "task": task, "metric": metric}
    instruction = _text(raw, "qry_inst", where)
    return {**row, "instruction": instruction} if instruction else row


def _either(keys: tuple[str, ...]) -> str:
    quoted = [f"'{key}'" for key in keys]
    return ", ".join(quoted[:-1]) + f" and {quoted[-1]}"


# ------------------------------------------------------------------ MRMR / BEIR


def convert_mrmr(
    src_dir: str | Path,
    out_dir: str | Path,
    task: str | None = None,
    image_root: str | Path | None = None,
    append: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert an MRMR/BEIR-style directory; returns a summary with any warnings."""
    src = Path(src_dir)
    if not src.is_dir():
        raise DatasetError(f"MRMR directory not found: {src}")
    task = task or src.resolve().name
    images, warnings = _Images(Path(image_root) if image_root else src), []
    corpus = _mrmr_items(src / "corpus.jsonl", images)
    if len(corpus) < 2:
        raise DatasetError("corpus.jsonl: needs at least 2 documents")
    qrels = _qrels(src, corpus)
    queries = _mrmr_items(src / "queries.jsonl", images)
    rows, skipped, partial = [], [], []
    for qid, (where, query, raw) in queries.items():
        doc_ids = _candidate_ids(raw.get("candidates"), corpus, where) or list(corpus)
        relevant = qrels.pop(qid, {})
        gains = [relevant.get(doc, 0) for doc in doc_ids]
        if max(gains) <= 0:
            skipped.append(qid)
            continue
        if sum(gain > 0 for gain in gains) < sum(gain > 0 for gain in relevant.values()):
            partial.append(qid)  # ideal DCG then counts only the candidates listed
        row = {
            "id": qid,
            "query": query,
            "candidates": [corpus[d][1] for d in doc_ids],
            "relevance": gains,
            "label": gains.index(max(gains)),
            "task": task,
            "metric": MRMR_METRIC,
        }
        instruction = _text(raw, "instruction", where)
        rows.append({**row, "instruction": instruction} if instruction else row)
    if not rows:
        raise DatasetError("queries.jsonl: no query has a relevant candidate in the qrels")
    warnings += _notes(skipped, "queries skipped: no relevant candidate")
    warnings += _notes(partial, "queries whose candidate list misses some relevant documents")
    warnings += _notes(sorted(qrels), "qrels query ids not in queries.jsonl (ignored)")
    return {**_write(Path(out_dir), rows, images, task, append, overwrite), "warnings": warnings}


def _mrmr_items(path: Path, images: _Images) -> dict[str, tuple[str, dict, dict]]:
    """id -> (location, item, raw row) for queries.jsonl / corpus.jsonl."""
    items: dict[str, tuple[str, dict, dict]] = {}
    for where, raw in _records(path):
        key = _row_id(raw, ("id", "_id"), where)
        if key in items:
            raise DatasetError(f"{where}: duplicate id {key!r} (first at {items[key][0]})")
        texts = [_text(raw, "title", where), _text(raw, "text", where)]
        image = raw.get("image")
        if isinstance(image, list):  # interleaved: several images in reading order, all kept
            image = [i for i in _str_list(raw, "image", where) or [] if i]
        else:
            image = _string({"image": image}, "image", where)
        item = _item("\n".join(t for t in texts if t) or None, image, images, where, "text/image")
        items[key] = (where, item, raw)
    return items


def _row_id(raw: dict, keys: tuple[str, ...], where: str) -> str:
    for key in keys:
        value = raw.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    raise DatasetError(f"{where}: missing '{keys[0]}' (a string or integer id)")


def _candidate_ids(value: Any, corpus: dict, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) < 2:
        raise DatasetError(f"{where}: 'candidates' must be an array of at least 2 doc ids")
    ids = [str(v) for v in value]
    missing = [doc for doc in ids if doc not in corpus]
    if missing:
        raise DatasetError(f"{where}: 'candidates' names unknown doc ids {missing[:5]}")
    return ids


def _qrels(src: Path, corpus: dict) -> dict[str, dict[str, float]]:
    """query id -> {doc id: gain}, from the first qrels file present."""
    path = next((src / name for name in QRELS_FILES if (src / name).is_file()), None)
    if path is None:
        raise DatasetError(f"no qrels file in {src} (looked for {', '.join(QRELS_FILES)})")
    qrels: dict[str, dict[str, float]] = {}
    for where, query, doc, score in _qrel_lines(path):
        if doc not in corpus:
            raise DatasetError(f"{where}: doc id {doc!r} is not in corpus.jsonl")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not score >= 0:
            raise DatasetError(f"{where}: 'score' must be a non-negative number, got {score!r}")
        if doc in qrels.setdefault(query, {}):
            raise DatasetError(f"{where}: duplicate judgement for ({query!r}, {doc!r})")
        qrels[query][doc] = score
    return qrels


def _qrel_lines(path: Path) -> Iterator[tuple[str, str, str, Any]]:
    if path.suffix == ".jsonl":
        for where, raw in _records(path):
            query = _row_id(raw, ("query_id", "query-id"), where)
            yield where, query, _row_id(raw, ("doc_id", "corpus-id"), where), raw.get("score")
        return
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip() or (number == 1 and fields[-1].strip() == "score"):
            continue  # BEIR's header row
        if len(fields) != 3:
            raise DatasetError(
                f"{path.name}:{number}: expected query-id, corpus-id, score "
                f"separated by tabs, got {len(fields)} fields"
            )
        where = f"{path.name}:{number}"
        try:
            score = float(fields[2])
        except ValueError:
            raise DatasetError(f"{where}: score {fields[2]!r} is not a number") from None
        yield where, fields[0], fields[1], int(score) if score.is_integer() else score


def _notes(ids: list[str], what: str) -> list[str]:
    if not ids:
        return []
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    return [f"{len(ids)} {what}: {shown}"]
