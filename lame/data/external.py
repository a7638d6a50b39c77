"""Converters from external benchmark layouts into the LaME eval format (``eval.jsonl``).

Both converters validate every input row before writing anything, copy the images they use
to ``OUT/images/<path below the image root>`` (so the dataset is self-contained and rows hold
paths relative to OUT, as the loader expects) and replace ``OUT/eval.jsonl`` atomically.

**MMEB-v2** (``convert_mmeb``): a ``.jsonl`` file, or a ``.json`` array, of rows::

    {"qry_inst"?: str, "qry_text"?: str, "qry_img_path"?: str,
     "tgt_text"?: [str, ...], "tgt_img_path"?: [str, ...]}

The first target is the positive.  Image paths are relative to ``image_root``; ``""`` or
``null`` means no image.  Image placeholder tokens (``<|image_1|>``, ``<image>``) are removed
from texts.  Family ``image`` tasks report hit@1, ``visdoc`` tasks linear NDCG@5.

**MRMR / BEIR** (``convert_mrmr``): a directory with ``queries.jsonl``
(``{"id"|"_id", "text"?, "image"?: str | [str, ...], "instruction"?, "candidates"?: [doc id]}``),
``corpus.jsonl`` (``{"id"|"_id", "title"?, "text"?, "image"?}``) and ``qrels.jsonl``
(``{"query_id", "doc_id", "score"}``) or BEIR's ``qrels.tsv`` / ``qrels/test.tsv``
(``query-id<TAB>corpus-id<TAB>score``, header optional).  A query's candidates are its
``candidates`` list, else the whole corpus; gains come from the qrels (absent: 0).  Tasks
report NDCG@10.  An Item holds one image, so only the first image of an interleaved query or
document is kept, with a warning; queries without a relevant candidate are skipped, as BEIR does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

from lame.data.dataset import EVAL_FILE, DatasetError, _read_objects

FAMILY_METRIC = {"image": "hit@1", "visdoc": "ndcg@5"}
MRMR_METRIC = "ndcg@10"
# VLM2Vec-style placeholders mark where an image sits in the prompt; our Item carries the
# image separately, so the token would only be noise to the tokenizer.
PLACEHOLDER = re.compile(r"(?:<\|image(?:_\d+)?\|>|<image>)\s*")
QRELS_FILES = ("qrels.jsonl", "qrels.tsv", "qrels/test.tsv")


class _Images:
    """Validates image paths below a root and remembers which files to copy into OUT/images."""

    def __init__(self, root: Path):
        self.root = root
        self.pending: dict[str, Path] = {}  # path relative to OUT -> source file

    def add(self, relative: str, where: str, field: str) -> str:
        norm = os.path.normpath(relative)
        # Copies keep their path below the root; a path escaping it would escape OUT too.
        if os.path.isabs(norm) or norm.split(os.sep)[0] == "..":
            raise DatasetError(f"{where}: {field} must be relative to the image root, got {relative!r}")
        source = self.root / norm
        dest = Path("images", norm).as_posix()
        if dest not in self.pending:
            if not source.is_file():
                raise DatasetError(f"{where}: {field} image not found: {relative} (looked for {source})")
            self.pending[dest] = source
        return dest

    def copy_to(self, out_dir: Path) -> None:
        for dest, source in self.pending.items():
            target = out_dir / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)


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


def _item(text: str | None, image: str | None, images: _Images, where: str, field: str) -> dict:
    item: dict[str, str] = {}
    if text:
        item["text"] = text
    if image:
        item["image"] = images.add(image, where, field)
    if not item:
        raise DatasetError(f"{where}: {field} has neither text nor image")
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
    return {"out": str(out_dir), "task": task, "rows": len(rows), "images": len(images.pending)}


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
    rows = [_mmeb_row(raw, where, images, task, FAMILY_METRIC[family]) for where, raw in _records(path)]
    return {**_write(Path(out_dir), rows, images, task, append, overwrite), "warnings": []}


def _mmeb_row(raw: dict, where: str, images: _Images, task: str, metric: str) -> dict:
    if "qry_text" not in raw and "qry_img_path" not in raw:
        raise DatasetError(f"{where}: missing 'qry_text' and 'qry_img_path' (need one)")
    query = _item(
        _text(raw, "qry_text", where),
        _string(raw, "qry_img_path", where),
        images,
        where,
        "qry_text/qry_img_path",
    )
    texts, paths = _str_list(raw, "tgt_text", where), _str_list(raw, "tgt_img_path", where)
    if texts is None and paths is None:
        raise DatasetError(f"{where}: missing 'tgt_text' and 'tgt_img_path' (need one)")
    texts = texts if texts is not None else [None] * len(paths)
    paths = paths if paths is not None else [None] * len(texts)
    if len(texts) != len(paths):
        raise DatasetError(
            f"{where}: 'tgt_text' has {len(texts)} entries but 'tgt_img_path' has {len(paths)}"
        )
    if len(texts) < 2:
        raise DatasetError(f"{where}: needs at least 2 targets (the positive first), got {len(texts)}")
    candidates = [
        _item(_clean(t), p, images, where, f"tgt_text[{i}]/tgt_img_path[{i}]")
        for i, (t, p) in enumerate(zip(texts, paths))
    ]
    row = {"query": query, "candidates": candidates, "label": 0, "task": task, "metric": metric}
    instruction = _text(raw, "qry_inst", where)
    return {**row, "instruction": instruction} if instruction else row


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
    corpus = _mrmr_items(src / "corpus.jsonl", images, warnings)
    if len(corpus) < 2:
        raise DatasetError("corpus.jsonl: needs at least 2 documents")
    qrels = _qrels(src, corpus)
    queries = _mrmr_items(src / "queries.jsonl", images, warnings)
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


def _mrmr_items(path: Path, images: _Images, warnings: list[str]) -> dict[str, tuple[str, dict, dict]]:
    """id -> (location, item, raw row) for queries.jsonl / corpus.jsonl."""
    items: dict[str, tuple[str, dict, dict]] = {}
    several = []
    for where, raw in _records(path):
        key = _row_id(raw, ("id", "_id"), where)
        if key in items:
            raise DatasetError(f"{where}: duplicate id {key!r} (first at {items[key][0]})")
        texts = [_text(raw, "title", where), _text(raw, "text", where)]
        image = raw.get("image")
        if isinstance(image, list):  # interleaved: several images in reading order
            present = [i for i in _str_list(raw, "image", where) if i]
            several += [key] if len(present) > 1 else []
            image = present[0] if present else None
        image = _string({"image": image}, "image", where)
        item = _item("\n".join(t for t in texts if t) or None, image, images, where, "text/image")
        items[key] = (where, item, raw)
    warnings += _notes(
        several, f"{path.name} rows with several images; only the first is kept (an item holds one image)"
    )
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
