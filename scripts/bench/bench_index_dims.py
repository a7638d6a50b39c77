"""Index memory and search time per Matryoshka size: an exact ``Index`` (float32 / float16 /
int8 storage) and, where FAISS is installed, an ``AnnIndex`` (flat), each holding N unit vectors
of d dimensions, saved to disk through the real persistence path.

    python scripts/bench/bench_index_dims.py --count 100000 --dims 32 64 128 [--json out.json]

Prints one markdown table: bytes in memory (the stored codes and scales), bytes on disk (the
saved .npz + .json), and the median time of a 64-query top-10 search, each also as a ratio to
the full size in the same run. Random vectors: memory and search cost do not depend on values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lame_runtime.retrieval.index import Index


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def median_search_s(index, queries: np.ndarray, rounds: int = 5) -> float:
    index.search(queries, 10)  # warm (FAISS builds its flat copy on first search)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        index.search(queries, 10)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(kind: str, storage: str, d: int, vectors: np.ndarray, queries: np.ndarray, folder: Path) -> dict:
    ids = [str(i) for i in range(len(vectors))]
    if kind == "exact":
        index = Index(d, storage=storage)
    else:
        from lame_runtime.retrieval.ann import AnnConfig, AnnIndex

        index = AnnIndex(d, AnnConfig(kind="flat", storage=storage))
    index.add(vectors, ids)
    path = folder / f"{kind}-{storage}-{d}"
    disk = sum(p.stat().st_size for p in index.save(path))
    if kind == "exact":
        state = index._merged()  # the codes and scales the index holds
        memory = state.codes.nbytes + (state.scales.nbytes if state.scales is not None else 0)
    else:
        memory = index.memory_bytes
    return {
        "kind": kind,
        "storage": storage,
        "dim": d,
        "memory_bytes": int(memory),
        "disk_bytes": int(disk),
        "search_s": median_search_s(index, queries),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--storages", nargs="+", default=["float32", "float16", "int8"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    full = max(args.dims)
    base, queries = unit(rng, args.count, full), unit(rng, 64, full)
    kinds = ["exact"]
    try:
        import faiss  # noqa: F401

        kinds.append("ann")
    except ImportError:
        pass
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            for storage in args.storages:
                for d in args.dims:
                    cut = base[:, :d] / np.linalg.norm(base[:, :d], axis=1, keepdims=True)
                    q = queries[:, :d] / np.linalg.norm(queries[:, :d], axis=1, keepdims=True)
                    rows.append(measure(kind, storage, d, cut, q, Path(tmp)))
    ref = {(r["kind"], r["storage"]): r for r in rows if r["dim"] == full}
    print(f"| index | storage | dim | memory (MiB) | vs {full} | disk (MiB) | search 64 q (ms) | vs {full} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        top = ref[(r["kind"], r["storage"])]
        print(
            f"| {r['kind']} | {r['storage']} | {r['dim']} | {r['memory_bytes'] / 2**20:.2f} | "
            f"{r['memory_bytes'] / top['memory_bytes']:.2f} | {r['disk_bytes'] / 2**20:.2f} | "
            f"{1000 * r['search_s']:.1f} | {r['search_s'] / top['search_s']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"count": args.count, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
