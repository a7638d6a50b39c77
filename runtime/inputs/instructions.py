"""Query instructions per direction and per task: written at training, picked at serving.

``instructions.json`` (checkpoint) and the manifest's ``"instructions"`` (artifact) hold::

    {"query": str | null,          # the one instruction every training row used, else null
     "document": str | null,       # documents' instruction (none in LaME's recipes)
     "directions": {"text->image": str | null, "image->text": ..., ...},
     "tasks": {task name: str | null}}

A direction is ``<query modality>-><target modality>``, a modality ``text``, ``image`` or
``text+image``. ``""`` means "trained without an instruction"; ``null`` means the rows of
that direction (or task) used several different ones, so none can be picked for them.

Serving (``Embedder.encode_queries``) picks per query row: an explicit ``instruction=``, else
the ``task=``'s, else the one instruction of the directions that start at the row's modality.
A caller that knows what the documents are (``lame-search query`` on an image index) also
passes the target modality: the direction ``<query>-><target>`` is then used when it was
trained, and a query modality no direction starts from (a text+image query on the digits
model, trained text->image and image->text) gets the one instruction of the directions that
end at the target. When those disagree (or there is none) it raises ``InputError`` asking for
``instruction=`` or ``task=``: never a silent majority vote. Artifacts without
``"directions"`` (exported before this format) keep using their ``"query"`` instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from lame_runtime.errors import InputError

MODALITIES = ("text", "image", "text+image")


@dataclass(frozen=True)
class Spelling:
    """How an error names the ways out: keyword arguments for Python callers; a command line
    passes its flags (``Spelling("--instruction TEXT", "''", "--task NAME")``)."""

    instruction: str = "instruction=..."
    empty: str = '""'
    task: str = "task=..."


PYTHON = Spelling()


def modality(text: Any, image: Any) -> str:
    """The modality of one row: "text", "image" or "text+image"."""
    if image is not None and text:
        return "text+image"
    return "image" if image is not None else "text"


def summarise(rows: Iterable[tuple[str, str, str | None, str | None]]) -> dict[str, Any]:
    """``(query modality, target modality, task, instruction)`` per training row -> the dict
    above."""
    per_direction: dict[str, set[str]] = {}
    per_task: dict[str, set[str]] = {}
    every: set[str] = set()
    for query, target, task, instruction in rows:
        instruction = instruction or ""
        per_direction.setdefault(f"{query}->{target}", set()).add(instruction)
        if task:
            per_task.setdefault(task, set()).add(instruction)
        every.add(instruction)

    def single(values: set[str]) -> str | None:
        return next(iter(values)) if len(values) == 1 else None

    common = single(every)
    return {
        "query": common or None,
        "document": None,
        "directions": {k: single(v) for k, v in sorted(per_direction.items())},
        "tasks": {k: single(v) for k, v in sorted(per_task.items())},
    }


def pick(
    instructions: dict[str, Any] | None,
    query_modality: str,
    task: str | None = None,
    target: str | None = None,
    spelling: Spelling = PYTHON,
) -> str | None:
    """The instruction for one query row (see the module docstring); raises when ambiguous.
    ``target``: the documents' modality, when the caller knows it; ``spelling``: how the error
    names ``instruction`` and ``task``."""
    instructions = instructions or {}
    if task is not None:
        tasks = instructions.get("tasks") or {}
        if task not in tasks:
            raise InputError(
                f"unknown task {task!r}: the model was trained on tasks {sorted(tasks) or 'none'}"
            )
        if tasks[task] is None:
            raise InputError(
                f"task {task!r} was trained with several instructions; pass {spelling.instruction} explicitly"
            )
        return tasks[task] or None
    directions = instructions.get("directions")
    if directions is None:  # an artifact from before per-direction instructions
        return instructions.get("query")
    if target is not None and directions.get(f"{query_modality}->{target}") is not None:
        return directions[f"{query_modality}->{target}"] or None
    matching = {name: value for name, value in directions.items() if name.split("->")[0] == query_modality}
    values = set(matching.values())
    if len(values) == 1 and None not in values:
        return next(iter(values)) or None
    if not matching and target is not None:
        # Nothing was trained from this kind of query: what it is for (finding the target
        # modality) decides, when the model learnt one instruction for that.
        toward = {value for name, value in directions.items() if name.split("->")[1] == target}
        if len(toward) == 1 and None not in toward:
            return next(iter(toward)) or None
    if not matching and instructions.get("query") is not None:
        return str(instructions["query"])
    trained = ", ".join(f"{name}: {value!r}" for name, value in sorted(directions.items()))
    reason = "no training direction starts from" if not matching else "several instructions were trained for"
    raise InputError(
        f"cannot choose a query instruction: {reason} {query_modality} queries "
        f"(trained: {trained or 'none'}); pass {spelling.instruction} ({spelling.empty} for none) or "
        f"{spelling.task} (one of {sorted(instructions.get('tasks') or {}) or 'none'})"
    )


def check(instructions: Any, where: str) -> dict[str, Any]:
    """Validate the structure (a clear error rather than a KeyError later)."""
    if instructions is None:
        return {}
    if not isinstance(instructions, dict):
        raise InputError(f"{where}: 'instructions' must be an object, got {type(instructions).__name__}")
    for key in ("query", "document"):
        if instructions.get(key) is not None and not isinstance(instructions[key], str):
            raise InputError(f"{where}: instructions.{key} must be a string or null")
    for key in ("directions", "tasks"):
        table = instructions.get(key)
        if table is None:
            continue
        if not isinstance(table, dict) or not all(isinstance(v, str) or v is None for v in table.values()):
            raise InputError(f"{where}: instructions.{key} must map names to strings or null")
    return instructions
