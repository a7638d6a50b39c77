"""lame-search's NVIDIA commands and options (torch-free): ``build-engine``, ``triton`` and the
``--backend/--providers/--device-id`` options of ``index`` and ``query``."""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

import click

from lame_runtime.engines.tensorrt.meta import ENGINE_PRECISIONS, NATIVE_PROFILE_KEYS, PROFILE_KEYS
from lame_runtime.options import BACKENDS

F = TypeVar("F", bound=Callable[..., Any])


def gpu_options(function: F) -> F:
    """--backend, --providers, --device-id, --strict-providers on an Embedder-using command."""
    options = [
        click.option(
            "--backend",
            type=click.Choice(BACKENDS),
            default="auto",
            show_default=True,
            help="auto: a compatible TensorRT engine of the artifact (lame-search build-engine) if "
            "there is one, else ONNX Runtime. ONNX Runtime's TensorRT provider: --providers tensorrt.",
        ),
        click.option(
            "--providers",
            default=None,
            help="ONNX Runtime providers in order, comma separated, each with optional "
            "options: 'CUDAExecutionProvider:device_id=1,CPUExecutionProvider' "
            "(short names: tensorrt, cuda, cpu).",
        ),
        click.option(
            "--device-id",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="GPU for the CUDA/TensorRT providers and the TensorRT backend.",
        ),
        click.option(
            "--strict-providers",
            is_flag=True,
            help="Fail instead of warning when a requested provider is absent or does not start.",
        ),
        click.option(
            "--max-pixels",
            type=click.IntRange(min=1),
            default=None,
            help="Refuse input images with more pixels (read from the file header, "
            "before decoding). Default: 100x the model's input, at least 25 Mpx.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def embedder_options(
    backend: str,
    providers: str | None,
    device_id: int,
    strict_providers: bool,
    max_pixels: int | None = None,
    **runtime: Any,
) -> dict[str, Any]:
    """The gpu_options values (and any other ``RuntimeOptions`` fields, e.g. ``threads``) as
    ``Embedder`` keyword arguments: ``Embedder(model, precision=p, **embedder_options(...))``."""
    from lame_runtime.engines.providers import parse_provider_arg
    from lame_runtime.options import RuntimeOptions

    return {
        "backend": backend,
        "device_id": device_id,
        "options": RuntimeOptions(
            providers=parse_provider_arg(providers) if providers else None,
            strict_providers=strict_providers,
            max_pixels=max_pixels,
            **runtime,
        ),
    }


@click.command("build-engine")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option(
    "--precision",
    type=click.Choice(ENGINE_PRECISIONS),
    default="fp16",
    show_default=True,
    help="fp16: from model_fp16.onnx; int8: from the Q/DQ "
    "model_int8.onnx (export with --int8 --int8-for-tensorrt).",
)
@click.option(
    "--workspace-mb",
    type=click.IntRange(min=1),
    default=None,
    help="TensorRT workspace memory pool limit in MiB (default: TensorRT's).",
)
@click.option(
    "--timing-cache",
    default=None,
    help="Timing cache file, read and updated (default: ARTIFACT/trt_cache/timing.cache).",
)
@click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--min-batch", type=click.IntRange(min=1), default=None)
@click.option("--opt-batch", type=click.IntRange(min=1), default=None)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=None,
    help="Profile batch sizes (default 1 / min(32, max) / the export's --max-batch).",
)
@click.option("--min-sequence", type=click.IntRange(min=1), default=None)
@click.option("--opt-sequence", type=click.IntRange(min=1), default=None)
@click.option(
    "--max-sequence",
    type=click.IntRange(min=1),
    default=None,
    help="Profile sequence lengths (default 2 / longest / longest row of the artifact).",
)
@click.option("--min-slices", type=click.IntRange(min=1), default=None)
@click.option("--opt-slices", type=click.IntRange(min=1), default=None)
@click.option(
    "--max-slices",
    type=click.IntRange(min=1),
    default=None,
    help="Native-resolution artifacts: images and video steps per batch (default 1 / opt batch / "
    "2 x max batch).",
)
@click.option("--min-patches", type=click.IntRange(min=1), default=None)
@click.option("--opt-patches", type=click.IntRange(min=1), default=None)
@click.option(
    "--max-patches",
    type=click.IntRange(min=1),
    default=None,
    help="Native-resolution artifacts: patches per image or video step (default one merge block / "
    "the graph's bound at max_pixels, twice).",
)
def build_engine_command(
    artifact: str,
    precision: str,
    workspace_mb: int | None,
    timing_cache: str | None,
    device_id: int,
    **profile: int | None,
) -> int:
    """Build a TensorRT engine (model_fp16.plan / model_int8.plan) inside ARTIFACT, on this GPU."""
    from lame_runtime.engines.tensorrt.build import EngineBuildOptions, build_engine

    options = EngineBuildOptions(
        precision=precision,
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        device_id=device_id,
        profile={k: profile[k] for k in (*PROFILE_KEYS, *NATIVE_PROFILE_KEYS) if profile[k] is not None},
    )
    record = build_engine(
        artifact, options, progress=lambda msg: click.echo(f"[build-engine] {msg}", err=True)
    )
    click.echo(
        json.dumps(
            {
                "engine": record["path"],
                "precision": precision,
                "tensorrt": record["tensorrt_version"],
                "gpu": record["gpu"],
                "profile": record["profile"],
                "trtexec": record["trtexec"],
            }
        )
    )
    return 0


@click.command("triton")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.argument("repo", type=click.Path(file_okay=False))
@click.option(
    "--name",
    default="lame",
    show_default=True,
    help="Model name prefix: NAME (ensemble), NAME_preprocess, NAME_embed.",
)
@click.option(
    "--precision",
    type=click.Choice(("fp32", "fp16", "int8")),
    default="fp32",
    show_default=True,
    help="Which graph (or engine) the embedding model serves.",
)
@click.option(
    "--platform",
    "kind",
    type=click.Choice(("auto", "onnx", "tensorrt_plan")),
    default="auto",
    show_default=True,
    help="auto: the TensorRT engine of PRECISION if the artifact has one, else ONNX.",
)
@click.option(
    "--trt-accelerator",
    is_flag=True,
    help="ONNX model: run it through ONNX Runtime's TensorRT accelerator in Triton.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=None,
    help="max_batch_size (default: the artifact's export --max-batch).",
)
@click.option(
    "--instances",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Instances of the embedding model per GPU.",
)
@click.option("--force", is_flag=True, help="Replace an existing model repository folder.")
def triton_command(
    artifact: str,
    repo: str,
    name: str,
    precision: str,
    kind: str,
    trt_accelerator: bool,
    max_batch: int | None,
    instances: int,
    force: bool,
) -> int:
    """Write a Triton model repository serving ARTIFACT: preprocessing + embedding + ensemble."""
    from lame_runtime.deploy.triton import TritonOptions, write_model_repository

    written = write_model_repository(
        artifact,
        repo,
        TritonOptions(
            name=name,
            precision=precision,
            platform=kind,
            trt_accelerator=trt_accelerator,
            max_batch=max_batch,
            instances=instances,
            force=force,
        ),
    )
    click.echo(json.dumps(written))
    return 0
