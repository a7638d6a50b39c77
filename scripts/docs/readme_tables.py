"""The README's tables of figures, generated from the docs' data files (docs/results/data/).

    python scripts/docs/readme_tables.py          # rewrite them in README.md
    python scripts/docs/readme_tables.py --check  # exit 1 if README.md differs (the tests run this)

A table sits between ``<!-- begin table: VIEW -->`` and ``<!-- end table: VIEW -->``; VIEWS
says which data file, rows and columns each view shows. The docs site renders the same files
(scripts/docs/hooks.py), so the README and the site cannot disagree with the data.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DATA = ROOT / "docs" / "results" / "data"

# view -> (data file, first-column values to keep (None: all rows), columns to show (None: all))
VIEWS = {
    "quickstart": ("quickstart", None, None),
}
# The headline: one row per method, quality (generative init, 500 steps, 3 seeds) beside speed
# (lame-bench, one shared backbone). label -> (row of quality_rendered.csv, row of bench_methods.csv)
HEADLINE = {
    "LaME (K = 8)": ("LaME, generative init", "LaME"),
    "discriminative (K = 0)": ("discriminative, generative init", "discriminative"),
    "latent (8 sequential steps)": ("latent, generative init", "latent (8 steps)"),
    "explicit CoT (128 tokens)": ("explicit CoT, generative init", "explicit CoT (128 tokens)"),
}
HEADLINE_COLUMNS = {
    "quality_rendered": ["hit@1", "tier 2"],
    "bench_methods": ["batch 1 emb/s", "batch 16 emb/s"],
}
BLOCK = re.compile(
    r"(<!-- begin table: (?P<view>[\w-]+) -->\n)(?P<body>.*?)(<!-- end table: (?P=view) -->)", re.S
)


def headline() -> str:
    """The methods' quality and speed in one table, each source's provenance below it."""
    from lame.evaluation.tables import PROVENANCE, read_table

    sources = {}
    for name in HEADLINE_COLUMNS:
        columns, rows = read_table(DATA / f"{name}.csv")
        sources[name] = {row[columns[0]]: row for row in rows}
    head = ["method", "hit@1", "tier 2", "emb/s, batch 1", "emb/s, batch 16"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    used: dict[str, list[tuple[str, ...]]] = {name: [] for name in HEADLINE_COLUMNS}
    for label, keys in HEADLINE.items():
        cells = [label]
        for (name, columns), key in zip(HEADLINE_COLUMNS.items(), keys):
            if key not in sources[name]:
                raise ValueError(f"{name}.csv has no row {key!r}")
            row = sources[name][key]
            cells += [row[c] for c in columns]
            prov = tuple(row[k] for k in PROVENANCE)
            if prov not in used[name]:
                used[name].append(prov)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, what in (("quality_rendered", "Quality"), ("bench_methods", "Speed")):
        for command, versions, machine, date in used[name]:
            lines.append(f"{what}: `{command}`; versions: {versions}; machine: {machine}; date: {date}.")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render(view: str) -> str:
    sys.path.insert(0, str(ROOT))
    from lame.evaluation.tables import read_table, render_markdown

    if view == "headline":
        return headline()
    name, keep, show = VIEWS[view]
    columns, rows = read_table(DATA / f"{name}.csv")
    if keep is not None:
        by_first = {row[columns[0]]: row for row in rows}
        missing = [k for k in keep if k not in by_first]
        if missing:
            raise ValueError(f"{name}.csv has no row {missing}")
        rows = [by_first[k] for k in keep]
    return render_markdown(show or columns, rows)


def rewrite(text: str) -> str:
    def replace(m: re.Match) -> str:
        return m.group(1) + render(m["view"]) + m.group(4)

    return BLOCK.sub(replace, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = rewrite(text)
    if args.check:
        if new != text:
            print("README.md's tables differ from docs/results/data: run scripts/docs/readme_tables.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
