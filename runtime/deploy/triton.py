"""A Triton Inference Server model repository for an export artifact (torch-free).

Three models, so a client sends raw text and encoded image bytes and gets embeddings back::

    <name>_preprocess  Python backend: lame_runtime's own preprocessing (TEXT, IMAGE -> tensors)
    <name>_embed       the graph: onnxruntime_onnx (optionally with the TensorRT accelerator),
                       or tensorrt_plan when the artifact has a TensorRT engine
    <name>             ensemble: TEXT, IMAGE -> <name>_preprocess -> <name>_embed -> EMBEDDING

Batch convention: every model has ``max_batch_size > 0``, so ``dims`` exclude the batch
dimension; a tensor that is batch-only in the graph (``image_mask``: [batch]) travels as
[batch, 1] (``dims: [1]``): the preprocessing model emits it so, and the embedding model declares
``reshape: { shape: [] }`` to hand the graph its [batch] (Triton's documented form for it).

TEXT and IMAGE are both required BYTES tensors of shape [batch, 1]; an empty string means "no
text" / "no image" for that row (the ensemble has no optional inputs).
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lame_runtime.artifact.bounds import DEFAULT_MAX_BATCH
from lame_runtime.artifact.contract import Artifact
from lame_runtime.artifact.manifest import PREPROCESSOR_FILE, TOKENIZER_FILE
from lame_runtime.engines.tensorrt.meta import validate_engines_section
from lame_runtime.errors import ArtifactError, InputError
from lame_runtime.inputs.preprocess import Preprocessor
from lame_runtime.persist import atomic_write_dir

MARKER = "lame_triton.json"
MODEL_TEMPLATE = Path(__file__).with_name("triton_model.py")
TRITON_DTYPES = {
    "int64": "TYPE_INT64",
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bytes": "TYPE_STRING",
}
TEXT_INPUT, IMAGE_INPUT, EMBEDDING_OUTPUT = "TEXT", "IMAGE", "EMBEDDING"


@dataclass
class TritonOptions:
    name: str = "lame"
    precision: str = "fp32"
    platform: str = "auto"  # auto | onnx | tensorrt_plan
    trt_accelerator: bool = False  # onnx: ONNX Runtime's TensorRT accelerator inside Triton
    max_batch: int | None = None  # default: the artifact's export max batch
    instances: int = 1
    queue_delay_us: int = 2000  # dynamic batching: how long a request may wait for others
    force: bool = False


# --------------------------------------------------------------------------- preprocessing
def decode_rows(texts: np.ndarray | None, images: np.ndarray | None) -> tuple[list[str | None], list[Any]]:
    """Triton BYTES tensors ([batch, 1] of bytes) -> (texts, PIL images); b"" -> None."""
    from PIL import Image, UnidentifiedImageError

    def flat(values: np.ndarray | None, what: str) -> list[bytes] | None:
        if values is None:
            return None
        values = np.asarray(values, dtype=object).reshape(-1)
        for i, value in enumerate(values):
            if not isinstance(value, (bytes, str)):
                raise InputError(f"{what}[{i}] must be bytes, got {type(value).__name__}")
        return [v.encode() if isinstance(v, str) else v for v in values]

    raw_texts, raw_images = flat(texts, TEXT_INPUT), flat(images, IMAGE_INPUT)
    if raw_texts is None and raw_images is None:
        raise InputError(f"send {TEXT_INPUT}, {IMAGE_INPUT} or both")
    rows = len(raw_texts) if raw_texts is not None else len(raw_images or ())
    raw_texts = raw_texts if raw_texts is not None else [b""] * rows
    raw_images = raw_images if raw_images is not None else [b""] * rows
    if len(raw_texts) != len(raw_images):
        raise InputError(
            f"{TEXT_INPUT} has {len(raw_texts)} rows, {IMAGE_INPUT} "
            f"{len(raw_images)}: send one of each per row (b'' for none)"
        )
    decoded_texts: list[str | None] = []
    decoded_images: list[Any] = []
    for i, (text, image) in enumerate(zip(raw_texts, raw_images)):
        try:
            decoded_texts.append(text.decode("utf-8") or None)
        except UnicodeDecodeError as err:
            raise InputError(f"{TEXT_INPUT}[{i}] is not UTF-8: {err}") from err
        if image:
            try:
                with Image.open(io.BytesIO(image)) as img:
                    img.load()
                    decoded_images.append(img.copy())
            except (UnidentifiedImageError, OSError) as err:
                raise InputError(f"{IMAGE_INPUT}[{i}] is not an encoded image (png/jpeg/...): {err}") from err
        else:
            decoded_images.append(None)
    return decoded_texts, decoded_images


def preprocess_request(
    preprocessor: Preprocessor, texts: np.ndarray | None, images: np.ndarray | None
) -> dict[str, np.ndarray]:
    """What the Triton Python model runs: raw request tensors -> the embedding model's inputs,
    batch-only tensors as [batch, 1] (Triton's shape for them, see the module docstring)."""
    feed = preprocessor(*decode_rows(texts, images))
    return {name: value[:, None] if value.ndim == 1 else value for name, value in feed.items()}


# --------------------------------------------------------------------------- config.pbtxt
def _dims(shape: Sequence[Any]) -> tuple[list[int], bool]:
    """Graph shape (batch first) -> (Triton dims without batch, needs reshape to [])."""
    rest = [d if isinstance(d, int) else -1 for d in shape[1:]]
    return (rest, False) if rest else ([1], True)


def _tensor(name: str, dtype: str, shape: Sequence[Any], allow_reshape: bool = True) -> str:
    dims, reshape = _dims(shape)
    reshape = reshape and allow_reshape
    text = (
        f'  {{\n    name: "{name}"\n    data_type: {TRITON_DTYPES[dtype]}\n'
        f"    dims: [ {', '.join(str(d) for d in dims)} ]\n"
    )
    if reshape:
        text += "    reshape: { shape: [ ] }\n"
    return text + "  }"


Tensor = tuple[str, str, Sequence[Any]]  # (name, dtype, shape) of a model input or output


def _io(kind: str, tensors: list[Tensor], reshape: bool = True) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor(*t, reshape) for t in tensors) + "\n]\n"


def embed_config(
    name: str,
    platform: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    max_batch: int,
    instances: int,
    queue_delay_us: int,
    default_file: str,
    accelerator: dict[str, str] | None = None,
) -> str:
    kind = "KIND_GPU" if platform == "tensorrt_plan" or accelerator else "KIND_AUTO"
    text = (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
        f'default_model_filename: "{default_file}"\n'
        + _io("input", inputs)
        + _io("output", outputs)
        + f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
        + f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]\n"
    )
    if accelerator:
        params = "".join(
            f'        parameters {{ key: "{k}" value: "{v}" }}\n' for k, v in accelerator.items()
        )
        text += (
            "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [\n"
            f'      {{\n        name : "tensorrt"\n{params}      }}\n    ]\n  }}\n}}\n'
        )
    return text


def preprocess_config(name: str, outputs: list[Tensor], max_batch: int) -> str:
    inputs: list[Tensor] = [(TEXT_INPUT, "bytes", ["batch", 1]), (IMAGE_INPUT, "bytes", ["batch", 1])]
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
        + _io("input", inputs)
        + _io("output", outputs, reshape=False)
        + "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
    )


def ensemble_config(
    name: str,
    preprocess: str,
    embed: str,
    feed_names: list[str],
    graph_output: str,
    output_dtype: str,
    output_shape: Sequence[Any],
    max_batch: int,
) -> str:
    inputs: list[Tensor] = [(TEXT_INPUT, "bytes", ["batch", 1]), (IMAGE_INPUT, "bytes", ["batch", 1])]
    outputs: list[Tensor] = [(EMBEDDING_OUTPUT, output_dtype, output_shape)]

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
        maps = "".join(f'      input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in inputs.items())
        maps += "".join(f'      output_map {{ key: "{k}" value: "{v}" }}\n' for k, v in outputs.items())
        return f'    {{\n      model_name: "{model}"\n      model_version: -1\n{maps}    }}'

    first = step(
        preprocess, {TEXT_INPUT: TEXT_INPUT, IMAGE_INPUT: IMAGE_INPUT}, {n: f"_{n}" for n in feed_names}
    )
    second = step(embed, {n: f"_{n}" for n in feed_names}, {graph_output: EMBEDDING_OUTPUT})
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
        + _io("input", inputs)
        + _io("output", outputs)
        + f"ensemble_scheduling {{\n  step [\n{first},\n{second}\n  ]\n}}\n"
    )


# --------------------------------------------------------------------------- repository
def write_model_repository(
    artifact_dir: str | Path, repo: str | Path, options: TritonOptions | None = None
) -> dict[str, Any]:
    """Write (atomically) the three-model repository; -> a summary of what was written."""
    options = options or TritonOptions()
    artifact = Artifact.open(artifact_dir)
    manifest = artifact.manifest
    engines = validate_engines_section(manifest)
    max_batch = options.max_batch or int(manifest.get("max_batch", DEFAULT_MAX_BATCH))
    if max_batch > int(manifest.get("max_batch", DEFAULT_MAX_BATCH)):
        raise InputError(
            f"max_batch {max_batch} exceeds the exported graph's "
            f"{manifest.get('max_batch', DEFAULT_MAX_BATCH)}"
        )
    platform = options.platform
    if platform == "auto":
        platform = "tensorrt_plan" if options.precision in engines else "onnx"
    if platform == "tensorrt_plan":
        if options.precision not in engines:
            raise ArtifactError(
                f"{artifact.path} has no {options.precision} TensorRT engine; "
                "build one with lame-search build-engine, or use --platform onnx"
            )
        model_files = [engines[options.precision]["path"]]
    else:
        graph = artifact.file_for(options.precision)
        entry = artifact.models[options.precision]
        model_files = [graph.name, *entry["external_data"]]
    repo = Path(repo)
    if repo.exists() and any(repo.iterdir()) and not options.force:
        raise FileExistsError(f"{repo} exists; pass --force to replace it")
    names = {
        "ensemble": options.name,
        "preprocess": f"{options.name}_preprocess",
        "embed": f"{options.name}_embed",
    }
    inputs = [(s["name"], s["dtype"], s["shape"]) for s in manifest["inputs"]]
    outputs = [(s["name"], s["dtype"], s["shape"]) for s in manifest["outputs"]]
    accelerator = None
    if platform == "onnx" and options.trt_accelerator:
        accelerator = {
            "precision_mode": "FP16" if options.precision == "fp16" else "FP32",
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": "/tmp/lame_trt_cache",
        }

    def write(stage: Path) -> None:
        embed_dir, pre_dir, ens_dir = (stage / names[k] / "1" for k in ("embed", "preprocess", "ensemble"))
        for folder in (embed_dir, pre_dir, ens_dir):
            folder.mkdir(parents=True)
        for name in model_files:
            shutil.copy2(artifact.path / name, embed_dir / name)
        (stage / names["embed"] / "config.pbtxt").write_text(
            embed_config(
                names["embed"],
                "tensorrt_plan" if platform == "tensorrt_plan" else "onnxruntime_onnx",
                inputs,
                outputs,
                max_batch,
                options.instances,
                options.queue_delay_us,
                model_files[0],
                accelerator,
            )
        )
        for name in (TOKENIZER_FILE, PREPROCESSOR_FILE):
            shutil.copy2(artifact.path / name, pre_dir / name)
        shutil.copy2(MODEL_TEMPLATE, pre_dir / "model.py")
        (stage / names["preprocess"] / "config.pbtxt").write_text(
            preprocess_config(names["preprocess"], inputs, max_batch)
        )
        (stage / names["ensemble"] / "config.pbtxt").write_text(
            ensemble_config(
                names["ensemble"],
                names["preprocess"],
                names["embed"],
                [n for n, _, _ in inputs],
                outputs[0][0],
                outputs[0][1],
                outputs[0][2],
                max_batch,
            )
        )
        (stage / MARKER).write_text(
            json.dumps(
                {
                    "artifact": str(artifact.path),
                    "models": names,
                    "platform": platform,
                    "precision": options.precision,
                },
                indent=2,
            )
        )

    atomic_write_dir(repo, write, marker=MARKER)
    return {
        "repository": str(repo),
        "models": names,
        "platform": platform,
        "precision": options.precision,
        "max_batch_size": max_batch,
        "files": model_files,
    }
