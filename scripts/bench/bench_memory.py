"""Peak memory of one Embedder serving text and images, routed or not, weights shared or not.

    python scripts/bench/bench_memory.py --model ART [--precision fp16] [--json OUT]

Each configuration runs in a fresh process (peak RSS is per process): open the Embedder, embed
8 texts (the text graph where routing is on) and 2 images (the full graph), then report the
peak RSS (``ru_maxrss``), the RSS at the end and the seconds to open and to embed. Printed side
by side, with every row's peak as a ratio of the unrouted one (``route_text=False``: one graph,
one copy of the weights):

* ``route_text=False``            every row through the full graph;
* ``routed, share_weights=False`` both graphs, each session with its own copy;
* ``routed, share_weights=True``  the default: one session over the artifact's routed graph
  (one copy of the weights, pre-packed once), or, for exports without one, both graphs over one
  mapped copy with pre-packing off.

Torch-free: runs where the runtime is installed (a Jetson included).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIGS = {
    "route_text=False": {"route_text": False},
    "routed, share_weights=False": {"route_text": True, "share_weights": False},
    "routed, share_weights=True": {"route_text": True, "share_weights": True},
}


def measure(model: str, precision: str, options: dict) -> dict:
    from lame_runtime.artifact.budget import measure_peak_rss  # the one measurement

    return measure_peak_rss(model, precision, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="artifact folder")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = {}
    for name, options in CONFIGS.items():
        rows[name] = measure(args.model, args.precision, options)
        print(f"[bench_memory] {name}: {rows[name]}", file=sys.stderr)
    base = rows["route_text=False"]["peak_rss_mb"]
    print(f"{args.model} ({args.precision}): peak RSS, one process per row")
    print(f"{'configuration':<30} {'peak MiB':>9} {'ratio':>6} {'end MiB':>8} {'open s':>7} {'encode s':>9}")
    for name, row in rows.items():
        print(
            f"{name:<30} {row['peak_rss_mb']:>9} {row['peak_rss_mb'] / base:>6.3f} "
            f"{row['end_rss_mb']:>8} {row['open_s']:>7} {row['encode_s']:>9}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"model": args.model, "precision": args.precision, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
