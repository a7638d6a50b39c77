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
    "headline_quality": (
        "quality_rendered",
        [
            "LaME, generative init, 1,000 steps",
            "discriminative, generative init, 1,000 steps",
            "explicit CoT, generative init",
        ],
        ["run", "seeds", "hit@1", "tier 2"],
    ),
    "headline_speed": ("bench_methods", None, ["method", "batch 1 emb/s", "batch 16 emb/s"]),
}
BLOCK = re.compile(
    r"(<!-- begin table: (?P<view>[\w-]+) -->\n)(?P<body>.*?)(<!-- end table: (?P=view) -->)", re.S
)


def render(view: str) -> str:
    sys.path.insert(0, str(ROOT))
    from lame.evaluation.tables import read_table, render_markdown

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
