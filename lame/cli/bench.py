"""lame-bench: embeddings/s of LaME vs CoT vs latent vs discriminative, plus deployment rows."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import click

from lame.cli import exit_with, invoke, require_train_extra, version_option

MUST = {
    "lame_vs_cot": 60.0,
    "lame_vs_latent": 2.0,
    "lame_vs_discriminative": 0.9,
    "ort_fp32_vs_torch": 1.5,
}  # the targets LaME should reach (from the paper), printed next to the figures


def render(report: dict) -> str:
    methods, env, settings = report["methods"], report["environment"], report["settings"]
    batches = [k for k in methods if k.startswith("batch")]
    where = env.get("gpu") or f"{env['cpus']} CPUs, {env['torch_threads']} torch threads"
    lines = [
        f"lame-bench --preset {report['preset']}: {where}, {env['dtype']}, "
        f"median of {settings['reps']} interleaved rounds; K={settings['K']}, "
        f"M={settings['M']}, CoT generates {settings['cot_new_tokens']} tokens, "
        f"mean input {methods['input_tokens']:.1f} tokens",
        f"{'method':<16}" + "".join(f"{b + ' emb/s':>16}{'LaME is':>10}" for b in batches),
    ]
    for name in methods[batches[0]]:
        row = f"{name:<16}"
        for batch in batches:
            rate = methods[batch][name]["emb_per_s"]
            row += f"{rate:>16.2f}{methods[batch]['lame']['emb_per_s'] / rate:>9.2f}x"
        lines.append(row)
    deploy = report.get("deployment")
    if deploy:
        lines.append(
            f"{'LaME backend':<16}"
            + "".join(f"{b + ' ms':>16}{'vs torch':>10}" for b in deploy["ms_per_batch"])
        )
        ms = deploy["ms_per_batch"]
        for backend in next(iter(ms.values())):
            lines.append(
                f"{backend:<16}"
                + "".join(
                    f"{ms[b][backend]:>16.2f}{ms[b]['torch eager'] / ms[b][backend]:>9.2f}x" for b in ms
                )
            )
        cold = deploy["cold_start"]
        lines.append(
            f"runtime cold start (fresh process: import + load + first vector): "
            f"{1000 * cold['total_s']:.0f} ms"
        )
    lines.append("ratios (the least favourable batch size):")
    for key, value in report["ratios"].items():
        target = f"   (target >= {MUST[key]}x)" if key in MUST else ""
        lines.append(f"  {key:<30}{value:>9.2f}x{target}")
    return "\n".join(lines)


def data_tables(report: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The printed tables as data files' rows (``lame.evaluation.tables``): ``bench_methods``
    (embeddings/s per method and batch, and how many times faster LaME is) and, with the
    deployment rows, ``bench_backends`` (ms per batch per backend, and the speed-up on torch)."""
    methods, settings = report["methods"], report["settings"]
    batches = [k for k in methods if k.startswith("batch")]
    labels = {
        "lame": "LaME",
        "latent": f"latent ({settings['K']} steps)",
        "cot": f"explicit CoT ({settings['cot_new_tokens']} tokens)",
    }
    header = ["method"]
    for batch in batches:
        n = batch.removeprefix("batch")
        header += [f"batch {n} emb/s", f"LaME is (batch {n})"]
    rows = []
    for name in methods[batches[0]]:
        row = [labels.get(name, name)]
        for batch in batches:
            rate = methods[batch][name]["emb_per_s"]
            row += [f"{rate:.2f}", f"{methods[batch]['lame']['emb_per_s'] / rate:.2f}×"]
        rows.append(row)
    tables = {"bench_methods": (header, rows)}
    deploy = report.get("deployment")
    if deploy:
        ms = deploy["ms_per_batch"]
        header = ["LaME backend (same run)"]
        for batch in ms:
            n = batch.removeprefix("batch")
            header += [f"batch {n} ms", f"vs torch (batch {n})"]
        rows = []
        for backend in next(iter(ms.values())):
            label = "PyTorch eager" if backend == "torch eager" else backend.replace("ort ", "ORT ")
            row = [label]
            for batch in ms:
                row += [f"{ms[batch][backend]:.2f}", f"{ms[batch]['torch eager'] / ms[batch][backend]:.2f}×"]
            rows.append(row)
        tables["bench_backends"] = (header, rows)
    return tables


def _write_data(out_dir: Path, report: dict) -> None:
    from lame.evaluation.tables import provenance, write_table

    prov = provenance()
    env = report["environment"]
    prov["machine"] = env.get("gpu") or f"{env['cpus']} CPUs, {env['torch_threads']} torch threads"
    for name, (header, rows) in data_tables(report).items():
        write_table(out_dir / f"{name}.csv", header, rows, prov)


def _write_json(path: Path, report: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(report, handle, indent=2)
    os.replace(tmp, path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@version_option("lame-bench")
@click.option(
    "--preset",
    default="small",
    show_default=True,
    help="Backbone size: tiny (CI smoke), small (2 CPU cores), 2b (Qwen2-VL-2B-sized, "
    "for GPUs); or any preset name/.json.",
)
@click.option(
    "--artifact",
    type=click.Path(file_okay=False),
    default=None,
    help="Export artifact for the ONNX Runtime rows (default: export the benchmark's own LaME model).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the full report (raw figures + ratios) here.",
)
@click.option(
    "--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="Write a PNG bar chart here."
)
@click.option("--batches", default="1,16", show_default=True, help="Comma-separated batch sizes.")
@click.option("--reps", type=int, default=5, show_default=True, help="Timed rounds (>= 5).")
@click.option(
    "--max-new-tokens",
    type=int,
    default=128,
    show_default=True,
    help="Tokens the CoT baseline generates per query.",
)
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True
)
@click.option("--threads", type=int, default=None, help="torch / ONNX Runtime CPU threads.")
@click.option("--no-deploy", is_flag=True, help="Skip the ONNX Runtime and cold-start rows.")
@click.option(
    "--data-out",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write the tables as data files for the docs (DIR/bench_methods.csv, bench_backends.csv).",
)
def command(
    preset,
    artifact,
    json_out,
    plot_out,
    batches,
    reps,
    max_new_tokens,
    device,
    dtype,
    threads,
    no_deploy,
    data_out,
) -> int:
    """Time the four methods on one backbone in one run; print a table and the ratios."""
    require_train_extra()
    from lame.device import resolve_device
    from lame.evaluation.bench import BenchOptions, run_bench

    device = str(resolve_device(device))  # one clear line when the GPU is missing

    try:
        sizes = tuple(int(b) for b in batches.split(","))
    except ValueError:
        raise ValueError(f"--batches must be comma-separated integers, got {batches!r}") from None
    options = BenchOptions(
        preset=preset,
        batches=sizes,
        reps=reps,
        max_new_tokens=max_new_tokens,
        device=device,
        dtype=dtype,
        artifact=artifact,
        deploy=not no_deploy,
        threads=threads,
    )
    report = run_bench(options, progress=lambda m: click.echo(f"[lame-bench] {m}", err=True))
    click.echo(render(report))
    if json_out:
        _write_json(Path(json_out), report)
    if data_out:
        _write_data(Path(data_out), report)
    if plot_out:
        from lame.evaluation.plots import plot_bench

        plot_bench(report, Path(plot_out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return invoke(command, argv, "lame-bench")


def run() -> None:
    exit_with(main)


if __name__ == "__main__":
    run()
