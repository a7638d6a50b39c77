"""items/s of `lame-search embed-corpus --engine ray` (1 and 2 actors) next to the single-process
`lame-search index`, on the same images, in one run; prints a Markdown table (docs/distributed.md).

    python scripts/bench/bench_ray_corpus.py ARTIFACT --images DIR [--repeat 3] [--cpus 2]
        [--batch-size 32] [--shard-size 500] [--work DIR] [--json OUT.json]
        [--data-out docs/results/data]

``--repeat R`` links the folder's images R times (R subfolders) for a longer run. One local Ray
cluster (``--cpus`` CPUs) serves both Ray runs; its start-up is timed separately, since a
cluster is started once and then serves many jobs. Each figure is items / wall seconds of the
whole call: model loading (and, for Ray, actor start-up) included. 1 actor gets all the CPUs
as ONNX Runtime threads, 2 actors half each, so every row uses the same cores.
No timed asserts: a script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _corpus(images: Path, repeat: int, work: Path) -> Path:
    folder = work / "corpus"
    if folder.exists():
        shutil.rmtree(folder)
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for r in range(repeat):
        (folder / f"r{r}").mkdir(parents=True)
        for p in files:
            os.link(p, folder / f"r{r}" / p.name)
    return folder


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("lame-embed", "ray", "pyarrow", "onnxruntime", "numpy")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument(
        "--images", required=True, help="A folder of images (e.g. a lame-data digits build's images/)."
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--work", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--data-out", default=None, help="Write ray_corpus.csv (the docs' data-file format) into this folder."
    )
    args = parser.parse_args(argv)

    import ray

    from lame_runtime.cli.search import main as search
    from lame_runtime.corpus.ray_job import CorpusOptions, embed_corpus

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_ray_corpus_"))
    corpus = _corpus(Path(args.images), args.repeat, work)
    count = sum(1 for _ in corpus.rglob("*.png")) + sum(1 for _ in corpus.rglob("*.jp*g"))
    rows = []

    start = time.perf_counter()
    code = search(
        ["index", "--model", args.artifact, "--images", str(corpus), "--out", str(work / "single"),
         "--batch-size", str(args.batch_size), "--no-progress", "--force"]
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert code == 0, "lame-search index failed"
    rows.append({"run": "lame-search index (1 process)", "actors": "-", "seconds": seconds})

    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    cluster_start = time.perf_counter() - start
    try:
        for actors in (1, 2):
            cpus = args.cpus / actors
            options = CorpusOptions(
                concurrency=actors,
                num_cpus=cpus,
                threads=max(1, int(cpus)),
                batch_size=args.batch_size,
                shard_size=args.shard_size,
            )
            shutil.rmtree(work / f"ray{actors}", ignore_errors=True)  # a fresh job, not a resume
            start = time.perf_counter()
            summary = embed_corpus(
                args.artifact, corpus, work / f"ray{actors}", options, log=lambda line: None
            )
            seconds = time.perf_counter() - start
            assert summary["embedded"] == count, summary
            rows.append(
                {
                    "run": f"embed-corpus --engine ray --concurrency {actors}",
                    "actors": actors,
                    "seconds": seconds,
                }
            )
    finally:
        ray.shutdown()

    base = count / rows[0]["seconds"]
    for row in rows:
        row["items_per_s"] = count / row["seconds"]
        row["vs_single"] = row["items_per_s"] / base
    result = {
        "items": count,
        "cluster_start_s": cluster_start,
        "cpus": args.cpus,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "rows": rows,
        "versions": _versions(),
        "command": " ".join(["python", "scripts/bench/bench_ray_corpus.py", *(argv or sys.argv[1:])]),
    }
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.data_out:
        _write_data(result, Path(args.artifact).name, Path(args.data_out))
    return result


def _write_data(result: dict, model: str, out: Path) -> None:
    """The rows as docs/results/data/ray_corpus.csv, with their command, versions and machine."""
    from lame.evaluation.tables import installed_versions, provenance, write_table

    prov = provenance(result["command"])
    prov["versions"] = installed_versions(("ray", "pyarrow", "onnxruntime", "numpy", "pillow"))
    prov["machine"] += f"; load average {os.getloadavg()[0]:.1f} after the run"
    header = ["run", "model", "items", "wall s", "items/s", "vs single process"]
    rows = [
        [r["run"], model, str(result["items"]), f"{r['seconds']:.1f}", f"{r['items_per_s']:.0f}",
         f"{r['vs_single']:.2f}x"]
        for r in result["rows"]
    ]  # fmt: skip
    print(f"wrote {write_table(out / 'ray_corpus.csv', header, rows, prov)}")


def markdown(result: dict) -> str:
    lines = [
        f"{result['items']} images, batch {result['batch_size']}, shards of {result['shard_size']}, "
        f"{result['cpus']} CPUs; local Ray cluster start-up {result['cluster_start_s']:.1f} s (not in the rows)",
        "",
        "| run | wall s | items/s | vs single process |",
        "|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['run']} | {row['seconds']:.1f} | {row['items_per_s']:.0f} | {row['vs_single']:.2f}x |"
        )
    lines += [
        "",
        f"Command: `{result['command']}`",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
