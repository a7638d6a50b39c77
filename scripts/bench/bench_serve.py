#!/usr/bin/env python
"""Benchmark lame-serve: single-item /v1/embeddings requests at several concurrencies, with
dynamic batching on and off, against in-process ``Embedder.encode`` in one run.

    python scripts/bench/bench_serve.py --model ARTIFACT [--requests 400] [--concurrency 1,8,32]
        [--threads N] [--modality text|image] [--json OUT] [--runs N] [--data-out CSV]

Each configuration gets a fresh server process (``python -m lame_runtime.serve.cli`` on
127.0.0.1), a warm-up, then ``--requests`` requests from ``concurrency`` asyncio workers (one
httpx connection each, keep-alive). The client runs on the same machine and takes CPU from
the server, as a local client would; on 2 cores that is a real share, so the figures are a
lower bound for a server with its own cores. The reference is ``Embedder.encode`` in this
process at batch 1 and batch 32 (the rows/s that batching can at best recover), measured just
before each served cell (the server idles meanwhile: its ORT threads do not spin). Prints a
markdown table; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

TEXTS = [
    "the digits are 1 and 2",
    "the largest digit is 8",
    "the odd digits add up to 18",
    "the digits are in increasing order",
    "there are three digits above 4",
    "the digits span a range of 6",
    "the sum of the digits is 23",
    "the digits are 0 and 9",
]
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def items(embedder, modality: str, count: int) -> list:
    """Request inputs (texts or data-URI PNGs), distinct enough that nothing is cached."""
    if modality == "text":
        return [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(count)]
    from PIL import Image

    cfg = embedder.preprocessor.image
    rng = np.random.default_rng(0)
    out = []
    for _ in range(min(count, 64)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (cfg.height, cfg.width, 3), np.uint8)).save(buffer, format="PNG")
        out.append(
            [
                {
                    "type": "image_url",
                    "image_url": {
                        "url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
                    },
                }
            ]
        )
    return [out[i % len(out)] for i in range(count)]


class InProcess:
    """Embedder.encode rows/s at batch 1 and 32, with the Embedder's defaults (spinning ORT
    threads: its fastest back to back; the server does not spin)."""

    def __init__(self, model: str, threads: int | None, modality: str, rows: int):
        from lame_runtime import Embedder, RuntimeOptions

        self.embedder = embedder = Embedder(model, options=RuntimeOptions(threads=threads))
        data = items(embedder, modality, rows)
        if modality == "image":  # what the server decodes per request, done once here
            from lame_runtime.serve.schema import Row, decode

            decoded = [Row(None, base64.b64decode(d[0]["image_url"]["url"].split(",", 1)[1])) for d in data]
            decode(decoded, embedder.preprocessor.image, None)
            self.texts, self.images = [None] * rows, [r.image for r in decoded]
        else:
            self.texts, self.images = data, [None] * rows
        for batch in (1, 32):  # warm
            embedder.encode_queries(self.texts[:batch], self.images[:batch], batch_size=batch)

    def measure(self, rows: int) -> dict[int, float]:
        out = {}
        for batch in (1, 32):
            start = time.perf_counter()
            self.embedder.encode_queries(self.texts[:rows], self.images[:rows], batch_size=batch)
            out[batch] = rows / (time.perf_counter() - start)
        return out


class Server:
    def __init__(self, model: str, batching: bool, threads: int | None, max_batch: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "lame_runtime.serve.cli",
            "--model",
            model,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--max-queue",
            "4096",
            "--max-batch",
            str(max_batch),
        ]
        if threads:
            args += ["--threads", str(threads)]
        if not batching:
            args.append("--no-batching")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"lame-serve exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit("lame-serve did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=60)


async def drive(url: str, name: str, inputs: list, concurrency: int) -> tuple[float, list]:
    """-> (requests/s, latencies in s): ``concurrency`` keep-alive connections share the
    inputs. A minimal HTTP/1.1 client on asyncio streams: httpx costs ~2-4 ms of CPU per
    request, which on a 2-core machine would measure the client instead of the server."""
    host, port = url.split("//")[1].split(":")
    queue: asyncio.Queue = asyncio.Queue()
    for item in inputs:
        queue.put_nowait(json.dumps({"model": name, "input": [item]}).encode())
    latencies: list[float] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                writer.write(
                    b"POST /v1/embeddings HTTP/1.1\r\nHost: %s\r\nContent-Type: "
                    b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                answer = await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    raise SystemExit(f"request failed: {status} {answer[:300]!r}")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(inputs) / (time.perf_counter() - start), latencies


def run(args) -> dict:
    """Every served cell is preceded by an in-process measurement: the machine's other load
    drifts (another user's job can halve a figure), so each ratio compares neighbours."""
    name = Path(args.model).resolve().name
    reference = InProcess(args.model, args.threads, args.modality, args.requests)
    inputs = items(reference.embedder, args.modality, args.requests)
    ref_rows = max(32, min(args.requests, 160))
    results = []
    for batching in (True, False):
        server = Server(args.model, batching, args.threads, args.max_batch)
        try:
            server.wait_ready()
            asyncio.run(
                drive(server.url, name, inputs[: max(32, args.requests // 8)], max(args.concurrency))
            )  # warm-up
            for concurrency in args.concurrency:
                local = reference.measure(ref_rows)
                rate, latencies = asyncio.run(drive(server.url, name, inputs, concurrency))
                results.append(
                    {
                        "batching": batching,
                        "concurrency": concurrency,
                        "requests_per_s": rate,
                        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
                        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
                        "in_process_rows_per_s": local,
                    }
                )
                print(
                    f"[bench_serve] batching {'on' if batching else 'off'} c={concurrency}: "
                    f"{rate:.0f} req/s; in-process batch 32 {local[32]:.0f} rows/s",
                    file=sys.stderr,
                )
        finally:
            server.stop()
    return {
        "model": str(args.model),
        "modality": args.modality,
        "requests": args.requests,
        "served": results,
        "environment": environment(),
    }


def environment() -> dict:
    versions = {}
    for package in ("onnxruntime", "starlette", "uvicorn", "httptools", "uvloop", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        **versions,
    }


TABLE_HEADER = [
    "served / in-process",
    "concurrency",
    "requests/s",
    "p50 ms",
    "p99 ms",
    "in-process rows/s, batch 1 / 32 (just before)",
    "served / in-process batch 32",
    "batching on / off",
]


def table_rows(report: dict) -> list[list[str]]:
    """One row per served cell; each ratio against the in-process figure measured just before."""
    rows = []
    off = {r["concurrency"]: r for r in report["served"] if not r["batching"]}
    for row in report["served"]:
        ref = {int(k): v for k, v in row["in_process_rows_per_s"].items()}  # JSON: str keys
        ratio = row["requests_per_s"] / ref[32]
        on_off = ""
        if row["batching"] and row["concurrency"] in off:
            other = off[row["concurrency"]]
            # each side against its own neighbour reference, so drift cancels
            other_ref = {int(k): v for k, v in other["in_process_rows_per_s"].items()}
            on_off = f"{ratio / (other['requests_per_s'] / other_ref[32]):.2f}x"
        rows.append(
            [
                f"lame-serve, batching {'on' if row['batching'] else 'off'}",
                str(row["concurrency"]),
                f"{row['requests_per_s']:.1f}",
                f"{row['p50_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                f"{ref[1]:.1f} / {ref[32]:.1f}",
                f"{ratio:.2f}",
                on_off,
            ]
        )
    return rows


def table(report: dict) -> str:
    header = [f"{report['modality']}, single-item requests", *TABLE_HEADER[1:]]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    env = report["environment"]
    lines.append("")
    lines.append(
        f"Python {env['python']}, {env['cpus']} CPUs ({env['machine']}); onnxruntime "
        f"{env['onnxruntime']}, starlette {env['starlette']}, uvicorn {env['uvicorn']}, "
        f"httptools {env['httptools']}, uvloop {env['uvloop']}; {report['requests']} "
        "requests per cell."
    )
    return "\n".join(lines)


def write_data(path: Path, reports: list[dict], command: str) -> None:
    """The docs' data file: every run's rows, a ``run`` column first (``lame`` is installed
    wherever the docs are built)."""
    from lame.evaluation.tables import provenance, write_table

    rows = [[str(i + 1), *row] for i, report in enumerate(reports) for row in table_rows(report)]
    write_table(path, ["run", *TABLE_HEADER], rows, provenance(command))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="export artifact directory")
    parser.add_argument("--requests", type=int, default=400, help="requests per cell")
    parser.add_argument("--concurrency", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--modality", choices=["text", "image"], default="text")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement")
    parser.add_argument("--data-out", type=Path, help="also write the docs' CSV of every run here")
    args = parser.parse_args(argv)
    reports = []
    for _ in range(args.runs):
        reports.append(run(args))
        print(table(reports[-1]))
    if args.json:
        Path(args.json).write_text(json.dumps(reports if args.runs > 1 else reports[0], indent=2))
    if args.data_out:
        command = (
            f"python scripts/bench/bench_serve.py --model ART --requests {args.requests} --runs {args.runs}"
        )
        write_data(args.data_out, reports, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
