"""lame-export: checkpoint -> ONNX artifact (fp32, optional fp16 / int8 / int4), parity-gated.

Only click is imported at module level: ``--help`` and ``--version`` stay fast and torch-free;
the exporter (torch, onnx) is imported when the command runs."""

from __future__ import annotations

import json
import sys
from typing import Sequence

import click

from lame_runtime.artifact.bounds import DEFAULT_MAX_BATCH, DEFAULT_MAX_SEQUENCE

# Bad arguments that reach the library as builtins (click converts its own): one line, exit 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lame-embed", prog_name="lame-export")
@click.option(
    "--ckpt",
    required=True,
    type=click.Path(file_okay=False),
    help="Checkpoint directory written by lame-train.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Artifact directory to write (replaced atomically).",
)
@click.option("--fp16", is_flag=True, help="Also write model_fp16.onnx (fp32 I/O).")
@click.option("--int8", is_flag=True, help="Also write model_int8.onnx (Q/DQ, calibrated).")
@click.option(
    "--int4",
    is_flag=True,
    help="Also write model_int4.onnx: weight-only 4-bit blocks (ONNX Runtime "
    "MatMulNBits), no calibration; ONNX Runtime only (not TensorRT).",
)
@click.option(
    "--int4-block-size",
    type=click.IntRange(min=16),
    default=None,
    help="Weights per int4 scale (a power of two) for every weight. Default: 128 for weights "
    "whose quantised axis has 1024+ entries (where ONNX Runtime's int4 kernel beats fp32 on a "
    "CPU), 16 for narrower ones (small models need it for accuracy).",
)
@click.option(
    "--int4-accuracy-level",
    type=click.IntRange(0, 4),
    default=4,
    show_default=True,
    help="MatMulNBits compute: 4 = int8 activations (fastest on CPU), 0 = fp32.",
)
@click.option(
    "--int4-embeddings/--no-int4-embeddings",
    default=True,
    show_default=True,
    help="Quantise the token-embedding table to 4 bits too.",
)
@click.option(
    "--calib-data",
    type=click.Path(file_okay=False),
    default=None,
    help="Dataset directory: calibration samples and, if it has eval.jsonl, the retrieval gate.",
)
@click.option(
    "--calib",
    "calib_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A prepared calibration .npz (lame_calibration.build).",
)
@click.option(
    "--calib-size",
    type=int,
    default=128,
    show_default=True,
    help="Samples in the calibration set built from --calib-data.",
)
@click.option(
    "--int8-for-tensorrt",
    is_flag=True,
    help="Symmetric int8 activations (zero point 0), as TensorRT requires.",
)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset.")
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BATCH,
    show_default=True,
    help="Upper bound of the dynamic batch dimension.",
)
@click.option(
    "--max-sequence",
    type=click.IntRange(min=2),
    default=DEFAULT_MAX_SEQUENCE,
    show_default=True,
    help="Upper bound of the dynamic sequence dimension: the longest row (visual tokens + text) must fit.",
)
@click.option("--force", is_flag=True, help="Write the artifact even if a gate fails.")
@click.option(
    "--trt",
    "trt",
    type=click.Choice(("fp16", "int8")),
    default=None,
    help="Then build a TensorRT engine of this precision on this GPU (needs TensorRT; "
    "same as `lame-search build-engine OUT --precision P`).",
)
@click.option(
    "--external-data-threshold",
    "external_data_mib",
    type=click.FloatRange(min=0),
    default=1024,
    show_default=True,
    metavar="MiB",
    help="Save every graph with external data (model.onnx + model.onnx.data) when "
    "the fp32 weights exceed this size; 0 forces it (protobuf stops at 2 GB).",
)
def command(ckpt, out, external_data_mib, trt, **options) -> int:
    """Export a LaME checkpoint for the torch-free runtime, checking parity at every step."""
    from lame_export.pipeline import ExportOptions, export_checkpoint

    if trt:  # fail before minutes of export, and leave an existing --out untouched
        from lame_runtime.engines.tensorrt.build import check_build_environment

        check_build_environment()
        # The engine is built from the graph of its precision: export that graph too (int8 in
        # TensorRT's symmetric Q/DQ form).
        options[trt] = True
        options["int8_for_tensorrt"] = options["int8_for_tensorrt"] or trt == "int8"
    options["external_data_threshold"] = int(external_data_mib * 2**20)

    report = export_checkpoint(
        ckpt, out, ExportOptions(**options), progress=lambda msg: click.echo(f"[lame-export] {msg}", err=True)
    )
    summary = {p: report[p]["min_cosine"] for p in ("fp32", "fp16", "int8", "int4") if p in report}
    click.echo(
        json.dumps(
            {
                "artifact": out,
                "min_cosine": summary,
                "retrieval": report.get("retrieval", {}).get("hit@1"),
                "tensorrt_ok": report["tensorrt_lint"]["ok"],
                "failures": report["failures"],
            }
        )
    )
    if trt:
        from lame_runtime.engines.tensorrt.build import EngineBuildOptions, build_engine

        record = build_engine(
            out,
            EngineBuildOptions(precision=trt),
            progress=lambda msg: click.echo(f"[lame-export] {msg}", err=True),
        )
        click.echo(json.dumps({"engine": record["path"], "trtexec": record["trtexec"]}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # tools.invoke prints every LameError as one line (a failed gate: exit 3, "nothing
    # written"; TensorRT or a GPU missing for --trt: exit 2). Imported from the runtime, not
    # lame.cli, so that --help and --version load neither torch nor the exporter.
    from lame_runtime.cli.tools import invoke

    return invoke(command, argv, "lame-export", USER_ERRORS)


def run() -> None:
    sys.exit(main())
