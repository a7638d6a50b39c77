"""Search benchmark: queries/s and recall@k vs exact for every index LaME offers, side by side.

Random unit vectors (the hardest case for approximate search: no cluster structure), for each
size x dimension: exact NumPy (the blocked search of ``Index(backend="numpy")``, run on the
vectors in place; the reference for recall), FAISS flat
(``Index(backend="faiss")``), ``AnnIndex`` flat fp16 / int8 (scalar quantizer), HNSW (float32
and int8) and Qdrant local mode (``QdrantStore(":memory:")``, the embedded engine; a folder adds
sqlite writes at build time, not at query time). Build seconds and stored bytes are reported too.

    OMP_NUM_THREADS=2 python scripts/bench/bench_search.py --sizes 100000 1000000 --dims 128 1536 \\
        --json bench_search.json

HNSW and Qdrant builds are slow on a small CPU: ``--max-hnsw``/``--max-qdrant`` cap the sizes
they run at (the skipped cells say so in the output).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import numpy as np

from lame_runtime.retrieval.ann import AnnConfig, AnnIndex
from lame_runtime.retrieval.index import Index

METHODS = ("numpy", "faiss-flat", "faiss-fp16", "faiss-int8", "hnsw", "hnsw-int8", "qdrant")


def unit_rows(rng: np.random.Generator, count: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        block = rng.standard_normal((min(chunk, count - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def build(method: str, vectors: np.ndarray, ids: list[str], args) -> tuple[object, float]:
    start = time.perf_counter()
    dim = vectors.shape[1]
    if method == "numpy":
        return ExactNumpy(vectors, ids), 0.0
    if method == "faiss-flat":
        index = Index(dim, backend="faiss")
    elif method == "qdrant":
        from lame_runtime.retrieval.qdrant_store import QdrantStore

        index = QdrantStore(":memory:", "bench", dim=dim, batch_size=1024)
    else:
        kind = "hnsw" if method.startswith("hnsw") else "flat"
        storage = {"faiss-fp16": "float16", "faiss-int8": "int8", "hnsw-int8": "int8"}.get(method, "float32")
        index = AnnIndex(
            dim,
            AnnConfig(
                kind,
                storage,
                hnsw_m=args.hnsw_m,
                ef_construction=args.ef_construction,
                ef_search=args.ef_search[0],
            ),
        )
    chunk = 50_000
    for lo in range(0, len(vectors), chunk):
        index.add(vectors[lo : lo + chunk], ids[lo : lo + chunk])
    if method == "faiss-flat":
        index.search(vectors[:1], 1)  # Index builds its FAISS index lazily, on first search
    return index, time.perf_counter() - start


class ExactNumpy:
    """The exact NumPy search of ``Index(backend="numpy")`` (blocked matmul + deterministic
    top-k, ``lame_runtime.retrieval.index._search_numpy``) run on the vectors in place: the reference,
    without the Index's own float32 copy (1M x 1536 would need 12 GB more)."""

    def __init__(self, vectors: np.ndarray, ids: list[str]):
        self.vectors, self.ids = vectors, ids
        self.scales = np.zeros(len(vectors), np.float32)

    def search(self, queries: np.ndarray, k: int):
        from lame_runtime.retrieval.index import _search_numpy

        scores, rows = _search_numpy(self.vectors, self.scales, "float32", queries, k)
        return scores, [[self.ids[r] for r in row] for row in rows]


def timed_search(index, queries: np.ndarray, k: int) -> tuple[list[list[str]], float]:
    index.search(queries[:2], k)  # warm-up (lazy merges, caches)
    start = time.perf_counter()
    _, found = index.search(queries, k)
    return found, len(queries) / (time.perf_counter() - start)


def stored_bytes(index) -> int | None:
    if isinstance(index, AnnIndex):
        return index.memory_bytes
    if isinstance(index, Index):
        return int(index._merged().codes.nbytes)
    if isinstance(index, ExactNumpy):
        return int(index.vectors.nbytes)
    return None


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--max-hnsw",
        type=int,
        default=1_000_000,
        help="Largest N x dim (in millions of floats) HNSW builds at.",
    )
    parser.add_argument(
        "--max-qdrant", type=int, default=100_000, help="Largest collection Qdrant local mode is run at."
    )
    parser.add_argument(
        "--max-faiss-flat",
        type=int,
        default=1_000,
        help="Largest N x dim (millions of floats) for Index(backend='faiss').",
    )
    parser.add_argument(
        "--qdrant-queries",
        type=int,
        default=20,
        help="Queries timed for Qdrant local mode (pure Python: slow).",
    )
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument(
        "--ef-search",
        type=int,
        nargs="+",
        default=[64, 256, 1024],
        help="HNSW query beams to measure (one build, a row each).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)

    rows = []
    for dim in args.dims:
        for size in args.sizes:
            rng = np.random.default_rng(args.seed)
            vectors = unit_rows(rng, size, dim)
            queries = unit_rows(rng, args.queries, dim)
            ids = [str(i) for i in range(size)]
            truth = None
            for method in args.methods:
                cell = {"n": size, "dim": dim, "method": method}
                if method.startswith("hnsw") and size * dim > args.max_hnsw * 1_000_000:
                    cell["skipped"] = f"N x dim > --max-hnsw {args.max_hnsw}M floats"
                elif method == "qdrant" and size > args.max_qdrant:
                    cell["skipped"] = f"N > --max-qdrant {args.max_qdrant}"
                elif method == "faiss-flat" and size * dim > args.max_faiss_flat * 1_000_000:
                    cell["skipped"] = (
                        f"N x dim > --max-faiss-flat {args.max_faiss_flat}M "
                        "floats (a third float32 copy does not fit in memory)"
                    )
                else:
                    index, seconds = build(method, vectors, ids, args)
                    beams = args.ef_search if method.startswith("hnsw") else [None]
                    for beam in beams:  # one build, a row per query beam
                        if beam is not None:
                            index.config.ef_search = beam
                        subset = queries[: args.qdrant_queries] if method == "qdrant" else queries
                        found, qps = timed_search(index, subset, args.k)
                        if truth is None:  # the first method run is the exact reference
                            if method != "numpy":
                                raise SystemExit("error: the first method must be numpy")
                            truth = found
                        row = dict(
                            cell,
                            build_s=round(seconds, 2),
                            qps=round(qps, 1),
                            recall=round(recall(found, truth[: len(found)]), 4),
                            queries=len(subset),
                            bytes=stored_bytes(index),
                        )
                        if beam is not None:
                            row["ef_search"] = beam
                        rows.append(row)
                        print(_line(row), file=sys.stderr, flush=True)
                    if hasattr(index, "close"):
                        index.close()
                    del index
                    gc.collect()
                    continue
                rows.append(cell)
                print(_line(cell), file=sys.stderr, flush=True)
            del vectors
            gc.collect()
    print(_table(rows, args.k))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "k": args.k,
                    "queries": args.queries,
                    "ef_search": args.ef_search,
                    "hnsw_m": args.hnsw_m,
                    "results": rows,
                },
                handle,
                indent=1,
            )
    return 0


def _line(cell: dict) -> str:
    if "skipped" in cell:
        return f"{cell['n']:>9} {cell['dim']:>5} {cell['method']:<14} skipped: {cell['skipped']}"
    size = f"{cell['bytes'] / 2**20:9.1f}" if cell.get("bytes") else "        -"
    method = cell["method"] + (f"@{cell['ef_search']}" if "ef_search" in cell else "")
    return (
        f"{cell['n']:>9} {cell['dim']:>5} {method:<14} {cell['qps']:>10.1f} "
        f"{cell['recall']:>7.4f} {cell['build_s']:>8.2f} {size}"
    )


def _table(rows: list[dict], k: int) -> str:
    head = (
        f"{'N':>9} {'dim':>5} {'method':<14} {'queries/s':>10} {'R@' + str(k):>7} {'build s':>8} {'MiB':>9}"
    )
    return "\n".join([head] + [_line(r) for r in rows])


if __name__ == "__main__":
    sys.exit(main())
