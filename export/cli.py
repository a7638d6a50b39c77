"""lame-export: checkpoint -> ONNX artifact (fp32, optional fp16 / int8), parity-gated."""
from __future__ import annotations

import json
import sys
from typing import Sequence

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--ckpt", required=True, type=click.Path(file_okay=False),
              help="Checkpoint directory written by lame-train.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Artifact directory to write (replaced atomically).")
@click.option("--fp16", is_flag=True, help="Also write model_fp16.onnx (fp32 I/O).")
@click.option("--int8", is_flag=True, help="Also write model_int8.onnx (Q/DQ, calibrated).")
@click.option("--calib-data", type=click.Path(file_okay=False), default=None,
              help="Dataset directory: calibration samples and, if it has eval.jsonl, the "
                   "retrieval gate.")
@click.option("--calib", "calib_file", type=click.Path(dir_okay=False), default=None,
              help="A prepared calibration .npz (lame_calibration.build).")
@click.option("--calib-size", type=int, default=128, show_default=True,
              help="Samples in the calibration set built from --calib-data.")
@click.option("--int8-for-tensorrt", is_flag=True,
              help="Symmetric int8 activations (zero point 0), as TensorRT requires.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset.")
@click.option("--max-batch", type=int, default=64, show_default=True,
              help="Upper bound of the dynamic batch dimension.")
@click.option("--force", is_flag=True, help="Write the artifact even if a gate fails.")
def command(ckpt, out, **options) -> int:
    """Export a LaME checkpoint for the torch-free runtime, checking parity at every step."""
    from lame_export.pipeline import ExportOptions, export_checkpoint

    report = export_checkpoint(ckpt, out, ExportOptions(**options),
                               progress=lambda msg: click.echo(f"[lame-export] {msg}", err=True))
    summary = {p: report[p]["min_cosine"] for p in ("fp32", "fp16", "int8") if p in report}
    click.echo(json.dumps({"artifact": out, "min_cosine": summary,
                           "retrieval": report.get("retrieval", {}).get("hit@1"),
                           "tensorrt_ok": report["tensorrt_lint"]["ok"],
                           "failures": report["failures"]}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from lame.cli import invoke
    from lame_export.pipeline import ExportGateError

    try:
        return invoke(command, argv, "lame-export")
    except ExportGateError as err:
        click.echo(f"lame-export: gate failed, nothing written: {err}", err=True)
        return 3


def run() -> None:
    sys.exit(main())
