"""The edge tables of docs/nvidia.md from the benchmark scripts' JSON outputs.

    python scripts/docs/edge_tables.py --runs DIR [--out docs/results/data] [--machine TEXT]

DIR holds what ``/tmp/edge_bench``-style runs wrote (any of them may be absent):
``rt_before.json`` / ``rt_after.json`` / ``rt_now.json`` (``bench_runtime.py --json``; the last
to its own table), ``mem_<p>.json``
(``bench_memory.py --json``), ``cold_before.json`` / ``cold_after.json`` / ``cold_cache.json``
(``bench_cold_start.py --json``), ``prof_image.json`` (``profile_ops.py --json``), ``matmulnbits.json``
(``bench_matmulnbits.py --json``). Each table
is written with ``lame.evaluation.tables.write_table``; its command column is the benchmark's
command line, with the probe artifact as PROBE_ART.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lame.evaluation.tables import provenance, write_table

RUNTIME = (
    "python scripts/bench/bench_runtime.py {art} --precisions fp32 int8 int4 --batches 8 "
    "--image-batches 2 --reps 5 --cold-runs 0 --threads 2"
)
MEMORY = "python scripts/bench/bench_memory.py --model PROBE_ART --precision PRECISION"
COLD = "python scripts/bench/bench_cold_start.py --model {art} --precisions fp32,int8,int4 --rounds 3 --evict{extra}"
PROFILE = (
    "python scripts/bench/profile_ops.py --model PROBE_ART --precisions fp32,int8 --rows image "
    "--batch 2 --runs 3 --threads 2 --top 20"
)
MATMULNBITS = "python scripts/bench/bench_matmulnbits.py --k 1536 --n 8960 --m 400 --threads 2 --rounds 5"
NOW = (
    "PROBE_ART exported by lame-export --ckpt PROBE_CKPT --out PROBE_ART --int8 --int4 "
    "--int4-block-size 128 --calib PROBE/calib.npz --force"
)
BEFORE = "PROBE_BEFORE (PROBE_ART without its routed graphs: two sessions over one mapping, pre-packing off)"


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _prov(command: str, machine: str) -> dict:
    prov = provenance(command)
    prov["machine"] = f"{prov['machine']}; {machine}"
    return prov


def latency(runs: Path, out: Path, machine: str) -> None:
    """``edge_latency.csv`` from the before/after runs, ``edge_latency_now.csv`` from
    ``rt_now.json`` (the current export: int4 blocks of 128, patch embedding as MatMul)."""
    tables = {
        "edge_latency.csv": (
            (
                ("two sessions, shared mapping (before)", "rt_before.json"),
                ("routed graph, one session", "rt_after.json"),
            ),
            RUNTIME.format(art="PROBE_ART") + "; the same on " + BEFORE,
        ),
        "edge_latency_now.csv": (
            (("routed graph; int4 blocks of 128, patch embedding as MatMul", "rt_now.json"),),
            RUNTIME.format(art="PROBE_ART") + "; " + NOW,
        ),
    }
    header = [
        "precision",
        "default `Embedder`",
        "text batch 8, emb/s (× fp32)",
        "image batch 2, emb/s (× fp32)",
    ]
    for table, (sources, command) in tables.items():
        rows = []
        for label, name in sources:
            report = _load(runs / name)
            if report is None:
                continue
            cells = {(r["precision"], r["modality"]): r["emb_per_s"] for r in report["throughput"]}
            for precision in ("fp32", "int8", "int4"):
                row = [precision, label]
                for modality in ("text", "image"):
                    value, base = cells[(precision, modality)], cells[("fp32", modality)]
                    row.append(f"{value:.2f} ({value / base:.2f})")
                rows.append(row)
        if rows:
            write_table(out / table, header, rows, _prov(command, machine))


def memory(runs: Path, out: Path, machine: str) -> None:
    rows = []
    for precision in ("fp32", "int8", "int4"):
        report = _load(runs / f"mem_{precision}.json")
        if report is None:
            continue
        measured = report["rows"]
        base = measured["route_text=False"]["peak_rss_mb"]

        def cell(name: str) -> str:
            r = measured[name]
            return f"{r['peak_rss_mb']:,.0f} MiB ({r['peak_rss_mb'] / base:.3f}), {r['encode_s']} s"

        rows.append(
            [
                precision,
                cell("route_text=False"),
                cell("routed, share_weights=False"),
                cell("routed, share_weights=True"),
            ]
        )
    if rows:
        header = [
            "precision",
            "`route_text=False`",
            "routed, `share_weights=False`",
            "routed, default (routed graph, one session)",
        ]
        write_table(out / "edge_memory.csv", header, rows, _prov(MEMORY, machine))


def cold_start(runs: Path, out: Path, machine: str) -> None:
    columns = ("python+import", "open", "session", "first text", "first image", "total")
    rows = []
    for label, name in (
        ("before: two sessions", "cold_before.json"),
        ("routed graph", "cold_after.json"),
        ("routed graph + session cache", "cold_cache.json"),
    ):
        report = _load(runs / name)
        if report is None:
            continue
        for key, measured in report["runs"].items():
            precision, state = key.split()
            medians = [statistics.median(r[c] for r in measured) for c in columns]
            rows.append([precision, state, label, *(f"{m:.2f}" for m in medians)])
    rows.sort(key=lambda r: (("fp32", "int8", "int4").index(r[0]), r[1] != "warm"))
    if rows:
        header = ["precision", "page cache", "configuration", *(f"{c} s" for c in columns)]
        command = "; ".join(
            COLD.format(art=art, extra=extra)
            for art, extra in (
                ("PROBE_BEFORE", ""),
                ("PROBE_ART", ""),
                ("PROBE_ART", " --options '{\"session_cache\": DIR}'"),
            )
        )
        write_table(out / "edge_cold_start.csv", header, rows, _prov(command, machine))


def profile(runs: Path, out: Path, machine: str, top: int = 12) -> None:
    report = _load(runs / "prof_image.json")
    if report is None:
        return
    fp32, int8 = report["ms_per_call"]["fp32"], report["ms_per_call"]["int8"]
    ops = sorted(set(fp32) | set(int8), key=lambda op: -max(fp32.get(op, 0), int8.get(op, 0)))[:top]
    rows = []
    for op in [*ops, "total"]:
        a = sum(fp32.values()) if op == "total" else fp32.get(op, 0.0)
        b = sum(int8.values()) if op == "total" else int8.get(op, 0.0)
        rows.append([op, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}" if a else "—"])
    header = ["operator (image rows, batch 2)", "fp32 ms/call", "int8 ms/call", "int8 / fp32"]
    write_table(out / "edge_int8_profile.csv", header, rows, _prov(PROFILE, machine))


def matmulnbits(runs: Path, out: Path, machine: str) -> None:
    report = _load(runs / "matmulnbits.json")
    if report is None:
        return
    seconds = report["seconds"]
    base = seconds["fp32 MatMul"]
    rows = [[name, f"{value * 1000:.1f}", f"{base / value:.2f}"] for name, value in seconds.items()]
    header = ["kernel", "ms per call", "speed × fp32"]
    write_table(out / "edge_matmulnbits.csv", header, rows, _prov(MATMULNBITS, machine))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/results/data"))
    parser.add_argument("--machine", default="shared with other jobs", help="appended to the machine column")
    args = parser.parse_args(argv)
    for table in (latency, memory, cold_start, profile, matmulnbits):
        table(args.runs, args.out, args.machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
