"""Reader and validator for the LaME dataset directory format.

A dataset is a directory holding two JSON-lines files:

* ``train.jsonl`` -- one training pair per line::

      {"query": {"text"?: str, "image"?: str | [str, ...], "video"?: str}, "target": {...},
       "answer"?: str, "rationale"?: str, "negatives"?: [item, ...],
       "instruction"?: str, "task"?: str}

* ``eval.jsonl`` -- one retrieval problem per line (MMEB convention: the
  candidate at index ``label`` is the positive, default 0)::

      {"query": {...}, "candidates": [{...}, ...], "label"?: int,
       "task"?: str, "instruction"?: str, "relevance"?: [number, ...],
       "metric"?: "hit@1" | "ndcg@5" | "ndcg@10"}

  ``relevance`` (optional) gives each candidate a graded gain (>= 0, one per
  candidate, at least one > 0) for rows with several relevant candidates;
  without it the candidate at ``label`` has gain 1 and the rest 0.  With it,
  ``label`` still names the best positive: it defaults to the first candidate
  of highest gain, and an explicit ``label`` must point at a highest gain.
  ``metric`` names the score the row's task reports (default ``hit@1``); all
  rows of one task must agree on it.

An item needs at least one of ``text``/``image``/``video``.  ``image`` is one path or a list of
paths (several images, in reading order); ``video`` is a video file or a folder of frame files
(sorted by name).  Several images and videos need a native-resolution model (the Qwen-VL
families, ``--resolution native``); a fixed-size model refuses such rows before training.
Paths in rows are relative to the dataset directory and must stay inside it; after loading,
``Item.images`` and ``Item.video`` are absolute, and ``Item.image`` is the one image of an
item that has at most one.  Unknown keys are ignored so producers can carry extra annotations.

Every problem is reported as a :class:`DatasetError` whose message starts with
``<file>:<line>:`` (1-based), because datasets are hand-edited and a message
without a location is useless on a file with thousands of rows.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from lame_runtime.artifact.paths import contained_path
from lame_runtime.errors import LameError

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
# The per-row scores lame.evaluation.evaluate computes; a task reports one of them as its headline.
METRICS = ("hit@1", "ndcg@5", "ndcg@10")
DEFAULT_METRIC = "hit@1"


class DatasetError(LameError, ValueError):
    """A dataset directory, file or row is malformed."""


@dataclass(frozen=True, init=False)
class Item:
    """One side of a pair: a text, images and/or a video (absolute paths once loaded).

    ``Item(text, image)`` builds the common one-image item; ``images=`` (several, in order) and
    ``video=`` are keywords."""

    text: str | None
    images: tuple[str, ...]
    video: str | None

    def __init__(
        self,
        text: str | None = None,
        image: str | None = None,
        *,
        images: Sequence[str] = (),
        video: str | None = None,
    ):
        if image is not None and images:
            raise ValueError("give an Item either image= or images=, not both")
        if isinstance(images, str):  # a lone path would be read as its characters
            raise TypeError("Item(images=...) takes a list of paths; one path goes in image=")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "images", (image,) if image is not None else tuple(images))
        object.__setattr__(self, "video", video)

    @property
    def image(self) -> str | None:
        """The item's one image (None without); an item with several has no single one."""
        if len(self.images) > 1:
            raise ValueError(f"this item has {len(self.images)} images; read Item.images")
        return self.images[0] if self.images else None

    @property
    def visual(self) -> bool:
        """Whether the item carries an image or a video (its modality is not text only)."""
        return bool(self.images) or self.video is not None

    def key(self) -> str:
        """Stable identity string, used to embed each distinct item only once.

        JSON-quoting the parts keeps the key unambiguous even when a text contains the
        separator, and distinguishes a missing part from any text. A one-image item keeps the
        key it always had."""
        images: Any = self.images[0] if len(self.images) == 1 else list(self.images) or None
        key = "T:" + json.dumps(self.text) + "|I:" + json.dumps(images)
        return key + ("|V:" + json.dumps(self.video) if self.video is not None else "")


@dataclass
class TrainRow:
    query: Item
    target: Item
    answer: str | None = None
    rationale: str | None = None
    negatives: list[Item] = field(default_factory=list)
    instruction: str | None = None
    task: str | None = None
    where: str = field(default="", compare=False)  # "train.jsonl:12", for messages

    def items(self) -> list[Item]:
        return [self.query, self.target, *self.negatives]


@dataclass
class EvalRow:
    query: Item
    candidates: list[Item]
    label: int = 0
    task: str = "default"
    instruction: str | None = None
    relevance: list[float] | None = None  # per-candidate gain; None: one-hot at label
    metric: str = DEFAULT_METRIC
    where: str = field(default="", compare=False)  # "eval.jsonl:12", for messages

    def items(self) -> list[Item]:
        return [self.query, *self.candidates]


def check_fixed_size(rows: Sequence[TrainRow | EvalRow]) -> None:
    """Raise DatasetError naming the first row a fixed-size model cannot read: an item with
    several images or a video (those need a native-resolution model)."""
    for row in rows:
        for name, item in _named_items(row):
            if len(item.images) > 1 or item.video is not None:
                what = f"{len(item.images)} images" if len(item.images) > 1 else "a video"
                raise DatasetError(
                    f"{row.where or 'row'}: {name} has {what}; this model reads one fixed-size image "
                    "per item: several images and videos need a native-resolution model "
                    "(a Qwen-VL preset with --resolution native)"
                )


def _named_items(row: TrainRow | EvalRow) -> Iterator[tuple[str, Item]]:
    if isinstance(row, TrainRow):
        yield from (("query", row.query), ("target", row.target))
        yield from ((f"negatives[{i}]", item) for i, item in enumerate(row.negatives))
    else:
        yield "query", row.query
        yield from ((f"candidates[{i}]", item) for i, item in enumerate(row.candidates))


def load_train(data_dir: str | Path, check_images: bool = True) -> list[TrainRow]:
    """Read and validate ``train.jsonl``; raises DatasetError on the first problem."""
    return list(_iter_train(Path(data_dir), check_images))


EVAL_SPLITS = ("eval", "val")


def load_eval(data_dir: str | Path, check_images: bool = True, split: str = "eval") -> list[EvalRow]:
    """Read and validate ``eval.jsonl`` (``split="val"``: ``val.jsonl``, the validation split
    some datasets carve from training rows); raises DatasetError on the first problem."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    root = _dataset_root(Path(data_dir))
    name = EVAL_FILE if split == "eval" else f"{split}.jsonl"
    if split != "eval" and not (root / name).is_file():
        raise DatasetError(
            f"{root} has no {name}: build the dataset with a validation split "
            "(lame-data digits --val-per-task N)"
        )
    checked: set[str] = set()
    task_metric: dict[str, tuple[str, str]] = {}  # task -> (metric, where first seen)
    rows = []
    for number, raw in _read_objects(root / name):
        parser = _RowParser(f"{name}:{number}", root, check_images, checked)
        row = parser.eval_row(raw)
        metric, first = task_metric.setdefault(row.task, (row.metric, parser.where))
        if metric != row.metric:
            # A task reports one headline score; mixing them would average incomparable numbers.
            raise parser.fail(f"task '{row.task}' uses metric '{row.metric}' but {first} set '{metric}'")
        rows.append(row)
    return rows


def iter_texts(data_dir: str | Path) -> Iterator[str]:
    """Yield every text of ``train.jsonl`` (items, answer, rationale, instruction).

    Meant as the corpus for training a tokenizer, so images are not checked.
    """
    for row in _iter_train(Path(data_dir), check_images=False):
        texts = [item.text for item in row.items()]
        texts += [row.answer, row.rationale, row.instruction]
        yield from (text for text in texts if text)


def _iter_train(data_dir: Path, check_images: bool) -> Iterator[TrainRow]:
    root = _dataset_root(data_dir)
    # Many rows share images; stat each file once.
    checked: set[str] = set()
    for number, raw in _read_objects(root / TRAIN_FILE):
        parser = _RowParser(f"{TRAIN_FILE}:{number}", root, check_images, checked)
        yield parser.train_row(raw)


def _dataset_root(data_dir: Path) -> Path:
    if not data_dir.is_dir():
        raise DatasetError(f"dataset directory not found: {data_dir}")
    return data_dir.resolve()


def _read_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, JSON object) for each non-blank line."""
    if not path.is_file():
        raise DatasetError(f"{path.name}: file not found in {path.parent}")
    count = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path.name}:{number}"
            try:
                # Only the line ending goes, so reported columns match the file.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{where}: not valid UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            except RecursionError:
                raise DatasetError(f"{where}: JSON nested too deeply to read") from None
            except ValueError as exc:  # e.g. an integer of more than 4,300 digits
                raise DatasetError(f"{where}: invalid JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{where}: row must be a JSON object, got {_json_type(obj)}")
            count += 1
            yield number, obj
    if count == 0:
        raise DatasetError(f"{path.name}: file has no rows ({path})")


def _best(relevance: list[float] | None) -> int:
    """Index of the first highest gain: the default label of a row with relevance."""
    return 0 if relevance is None else relevance.index(max(relevance))


def _json_type(value: Any) -> str:
    """Name a parsed value by its JSON type, as the user wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _RowParser:
    """Validates one row; knows its file:line so every error can name it."""

    def __init__(self, where: str, root: Path, check_images: bool, checked: set[str]):
        self.where = where
        self.root = root
        self.check_images = check_images
        self.checked = checked

    def fail(self, message: str) -> DatasetError:
        return DatasetError(f"{self.where}: {message}")

    def train_row(self, raw: dict[str, Any]) -> TrainRow:
        return TrainRow(
            query=self.item(self.required(raw, "query"), "query"),
            target=self.item(self.required(raw, "target"), "target"),
            answer=self.optional_str(raw, "answer"),
            rationale=self.optional_str(raw, "rationale"),
            negatives=self.item_list(raw, "negatives", min_len=0),
            instruction=self.optional_str(raw, "instruction"),
            task=self.optional_str(raw, "task"),
            where=self.where,
        )

    def eval_row(self, raw: dict[str, Any]) -> EvalRow:
        query = self.item(self.required(raw, "query"), "query")
        self.required(raw, "candidates")
        candidates = self.item_list(raw, "candidates", min_len=2)
        relevance = self.relevance(raw.get("relevance"), len(candidates))
        return EvalRow(
            query=query,
            candidates=candidates,
            label=self.label(raw.get("label", _best(relevance)), len(candidates), relevance),
            task=self.optional_str(raw, "task") or "default",
            instruction=self.optional_str(raw, "instruction"),
            relevance=relevance,
            metric=self.metric(raw.get("metric", DEFAULT_METRIC)),
            where=self.where,
        )

    def required(self, raw: dict[str, Any], key: str) -> Any:
        if raw.get(key) is None:
            raise self.fail(f"missing required key '{key}'")
        return raw[key]

    def optional_str(self, raw: dict[str, Any], key: str, name: str | None = None) -> str | None:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise self.fail(f"'{name or key}' must be a string, got {_json_type(value)}")
        return value

    def item(self, value: Any, name: str) -> Item:
        if not isinstance(value, dict):
            got = _json_type(value)
            raise self.fail(f"{name} must be an object with 'text', 'image' and/or 'video', got {got}")
        text = self.optional_str(value, "text", f"{name}.text")
        images = self.image_list(value.get("image"), name)
        video = self.optional_str(value, "video", f"{name}.video")
        # An empty string carries nothing to embed, so it counts as absent.
        if not text and not images and not video:
            raise self.fail(f"{name} has neither 'text', 'image' nor 'video'")
        return Item(
            text or None,
            images=[self.image_path(image, where) for where, image in images],
            video=self.video_path(video, name) if video else None,
        )

    def image_list(self, value: Any, name: str) -> list[tuple[str, str]]:
        """(field name, relative path) per image: one string, or an array of strings."""
        if value is None or value == "":
            return []
        if isinstance(value, str):
            return [(f"{name}.image", value)]
        if not isinstance(value, list):
            raise self.fail(
                f"'{name}.image' must be a string or an array of strings, got {_json_type(value)}"
            )
        if not value:
            raise self.fail(f"'{name}.image' is an empty array (leave the key out for no image)")
        for index, entry in enumerate(value):
            if not isinstance(entry, str) or not entry:
                got = _json_type(entry) if entry != "" else "an empty string"
                raise self.fail(f"'{name}.image[{index}]' must be a non-empty string, got {got}")
        return [(f"{name}.image[{index}]", entry) for index, entry in enumerate(value)]

    def item_list(self, raw: dict[str, Any], key: str, min_len: int) -> list[Item]:
        value = raw.get(key)
        if value is None:
            value = []
        if not isinstance(value, list):
            raise self.fail(f"'{key}' must be an array of items, got {_json_type(value)}")
        if len(value) < min_len:
            raise self.fail(f"'{key}' needs at least {min_len} items, got {len(value)}")
        return [self.item(entry, f"{key}[{index}]") for index, entry in enumerate(value)]

    def label(self, value: Any, n_candidates: int, relevance: list[float] | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"'label' must be an integer, got {_json_type(value)}")
        if not 0 <= value < n_candidates:
            raise self.fail(f"label {value} out of range for {n_candidates} candidates")
        if relevance is not None and relevance[value] < max(relevance):
            raise self.fail(
                f"label {value} has relevance {relevance[value]:g}, below the "
                f"highest {max(relevance):g}; label must name a best positive"
            )
        return value

    def relevance(self, value: Any, n_candidates: int) -> list[float] | None:
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.fail(f"'relevance' must be an array of numbers, got {_json_type(value)}")
        if len(value) != n_candidates:
            raise self.fail(f"'relevance' has {len(value)} entries for {n_candidates} candidates")
        for index, gain in enumerate(value):
            if _json_type(gain) != "number" or not math.isfinite(gain) or gain < 0:
                raise self.fail(f"relevance[{index}] must be a non-negative number, got {json.dumps(gain)}")
        if max(value) <= 0:
            raise self.fail("'relevance' has no positive entry (no relevant candidate)")
        return [float(gain) for gain in value]

    def metric(self, value: Any) -> str:
        if value not in METRICS:
            raise self.fail(f"'metric' must be one of {', '.join(METRICS)}, got {json.dumps(value)}")
        return value

    def image_path(self, relative: str, field: str) -> str:
        """``field``: the key as the row spells it (``query.image``, ``query.image[1]``)."""
        path = self.contained(relative, field)
        if self.check_images and path not in self.checked:
            if not Path(path).is_file():
                raise self.fail(f"{field} file not found: {relative} (looked for {path})")
            self.checked.add(path)
        return path

    def video_path(self, relative: str, name: str) -> str:
        """A video file, or a folder holding frame files (read sorted by name)."""
        from lame_runtime.inputs.native import FRAME_SUFFIXES

        field = f"{name}.video"
        path = self.contained(relative, field)
        if self.check_images and path not in self.checked:
            found = Path(path)
            if found.is_dir():
                if not any(p.suffix.lower() in FRAME_SUFFIXES and p.is_file() for p in found.iterdir()):
                    raise self.fail(
                        f"{field} folder holds no frame files ({', '.join(FRAME_SUFFIXES)}): {relative}"
                    )
            elif not found.is_file():
                raise self.fail(f"{field} file or folder not found: {relative} (looked for {path})")
            self.checked.add(path)
        return path

    def contained(self, relative: str, field: str) -> str:
        # A row must not reach files outside the dataset (absolute paths, "..", symlinks).
        contained_path(self.root, relative, field, folder="dataset", error=self.fail)
        # Normalised so the same file always yields the same Item.key().
        return os.path.normpath(self.root / relative)
