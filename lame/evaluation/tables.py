"""Result tables as data files: the format the docs site renders its tables and plots from.

One CSV file per table (``docs/results/data/<name>.csv``): the table's own columns, then four
provenance columns on every row, ``command``, ``versions``, ``machine`` and ``date`` — what
made the row, with which packages, where and when. The docs hook
(``scripts/docs/hooks.py``) renders a page's ``<!-- table: NAME -->`` marker from that file,
so a page cannot drift from its data. Scripts that print markdown tables (for example
``scripts/quality/quality_table.py --data-out DIR``) write the same files with
:func:`write_markdown_tables`.

No torch here: the docs build imports this module.
"""

from __future__ import annotations

import csv
import datetime
import platform
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

PROVENANCE = ("command", "versions", "machine", "date")
# Packages named in a row's ``versions`` when they are installed (in this order).
VERSION_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "pillow",
    "safetensors",
    "faiss-cpu",
    "starlette",
    "uvicorn",
)


def installed_versions(packages: Iterable[str] = VERSION_PACKAGES) -> str:
    """``Python 3.11.7, torch 2.13.0+cpu, ...`` for the packages installed here."""
    parts = [f"Python {platform.python_version()}"]
    for name in packages:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(parts)


def this_machine() -> str:
    """``2 CPUs (x86_64), Linux``: what the row's figures were measured on."""
    import os

    return f"{os.cpu_count()} CPUs ({platform.machine()}), {platform.system()}"


def provenance(command: str | None = None) -> dict[str, str]:
    """The four provenance fields for rows made now, by ``command`` (default: this process's
    command line)."""
    return {
        "command": command or shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "versions": installed_versions(),
        "machine": this_machine(),
        "date": datetime.date.today().isoformat(),
    }


def split_row(line: str) -> list[str]:
    """The cells of one markdown table row (``| a | b |`` -> ``["a", "b"]``)."""
    text = line.strip()
    if not (text.startswith("|") and text.endswith("|")):
        raise ValueError(f"not a table row: {line!r}")
    return [cell.strip() for cell in text[1:-1].split("|")]


def parse_markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table in ``text``: (header, rows), in order."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if (
            lines[i].strip().startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\s*\|(\s*:?-+:?\s*\|)+\s*", lines[i + 1])
        ):
            header, rows = split_row(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


def _unique(path: Path, columns: Sequence[str]) -> None:
    repeated = sorted({c for c in columns if list(columns).count(c) > 1})
    if repeated:
        raise ValueError(f"{path.name}: column names must be unique, repeated: {repeated}")


def write_table(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[str]], prov: dict) -> Path:
    """One data file: ``header`` + the provenance columns, each row with ``prov``'s values."""
    path = Path(path)
    _unique(path, [*header, *PROVENANCE])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*header, *PROVENANCE])
        for row in rows:
            if len(row) != len(header):
                raise ValueError(f"{path.name}: a row has {len(row)} cells for {len(header)} columns")
            writer.writerow([*row, *(prov[k] for k in PROVENANCE)])
    return path


def write_markdown_tables(
    markdown: str, out_dir: str | Path, names: Sequence[str], prov: dict | None = None
) -> list[Path]:
    """Write the pipe tables of ``markdown`` as ``out_dir/<name>.csv``, one per name, in order."""
    tables = parse_markdown_tables(markdown)
    if len(tables) > len(names):
        raise ValueError(f"{len(tables)} tables but only {len(names)} names")
    prov = prov or provenance()
    return [
        write_table(Path(out_dir) / f"{name}.csv", header, rows, prov)
        for name, (header, rows) in zip(names, tables)
    ]


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """A data file -> (the table's own columns, rows as dicts including the provenance)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        _unique(path, fields)
        rows = list(reader)
    missing = [k for k in PROVENANCE if k not in fields]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} column (every row carries its provenance)")
    for n, row in enumerate(rows, start=2):
        if any(row.get(k) in (None, "") for k in PROVENANCE):
            raise ValueError(f"{path}:{n}: empty provenance field")
    return [c for c in fields if c not in PROVENANCE], rows


def render_markdown(columns: Sequence[str], rows: Sequence[dict[str, str]], indent: str = "") -> str:
    """The table as markdown, then one "Produced by" line per distinct provenance."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row[c] for c in columns) + " |" for row in rows),
    ]
    sources: list[tuple[str, ...]] = []
    for row in rows:
        key = tuple(row[k] for k in PROVENANCE)
        if key not in sources:
            sources.append(key)
    lines.append("")
    for command, versions, machine, date in sources:
        lines.append(f"Made by `{command}`; versions: {versions}; machine: {machine}; date: {date}.")
        lines.append("")
    return "\n".join(indent + line if line else "" for line in lines).rstrip() + "\n"


MEAN_SD = re.compile(r"^\s*\**([-+−]?[\d,]*\.?\d+)\**(?:\s*±\s*([\d,]*\.?\d+))?")


def number(cell: str) -> tuple[float, float]:
    """``"7.62 ± 1.49"`` -> (7.62, 1.49); ``"1,102.8"`` -> (1102.8, 0.0); bold marks ignored."""
    match = MEAN_SD.match(cell)
    if not match:
        raise ValueError(f"not a number: {cell!r}")
    mean = float(match.group(1).replace(",", "").replace("−", "-"))
    sd = float(match.group(2).replace(",", "")) if match.group(2) else 0.0
    return mean, sd
