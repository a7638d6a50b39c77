"""Annotate `lame-search query --json` results on the digits benchmark with the truth.

    lame-search query ... --json | python scripts/show_hits.py data/digits

For each hit, prints the digits in the image (from the builder's images.jsonl) and whether the
query statement holds for them — so the main job's example queries are checkable at a glance.
An image query (``--image-to-image``) prints the query image's digits and marks hits that are
the query image itself or show the same digits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lame.data.statements import parse_statement


def main(argv=None) -> None:
    data_dir = Path((argv or sys.argv[1:])[0])
    digits = {
        Path(r["image"]).name: r["digits"]
        for r in map(json.loads, (data_dir / "images.jsonl").read_text().splitlines())
    }
    result = json.load(sys.stdin)
    if not result["query"].get("text"):
        return show_image_query(result, digits)
    statement = parse_statement(result["query"]["text"])
    print(f"query: {statement.text!r}")
    for hit in result["results"]:
        seen = digits.get(Path(hit["id"]).name)
        verdict = "true " if seen is not None and statement.holds(seen) else "false"
        print(
            f"  {hit['rank']}. {hit['id']:<16} score {hit['score']:.4f}  digits {seen}  statement {verdict}"
        )


def show_image_query(result: dict, digits: dict) -> None:
    query = Path(result["query"]["image"]).name
    wanted = digits.get(query)
    print(f"query: image {query!r} (digits {wanted})")
    for hit in result["results"]:
        name = Path(hit["id"]).name
        seen = digits.get(name)
        verdict = "itself" if name == query else ("same digits" if seen == wanted else "other")
        print(f"  {hit['rank']}. {hit['id']:<16} score {hit['score']:.4f}  digits {seen}  {verdict}")


if __name__ == "__main__":
    main()
