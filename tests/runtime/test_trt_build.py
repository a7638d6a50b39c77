"""TensorRT engines: the failure paths here (no TensorRT), the real build where TensorRT is."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import runtime_artifact  # noqa: F401  (a fixture)

from lame_runtime import Embedder, RuntimeOptions
from lame_runtime.artifact.contract import MANIFEST
from lame_runtime.artifact.files import HashCache
from lame_runtime.engines.tensorrt.backend import probe_device
from lame_runtime.engines.tensorrt.meta import engine_profiles, profile_shapes
from lame_runtime.errors import BackendError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
no_tensorrt = pytest.mark.skipif(
    HAS_TENSORRT, reason="TensorRT is installed: the missing-TensorRT path cannot be shown"
)


@pytest.fixture
def artifact_copy(runtime_artifact, tmp_path) -> Path:
    out = tmp_path / "artifact"
    shutil.copytree(runtime_artifact, out)
    return out


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.runtime
@no_tensorrt
def test_build_engine_without_tensorrt_is_one_line_and_writes_nothing(artifact_copy, capsys):
    from lame_runtime.cli.search import main

    before = snapshot(artifact_copy)
    code = main(["build-engine", str(artifact_copy), "--precision", "fp16"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lame-search: error: TensorRT")
    assert "JetPack" in err and "pip install tensorrt" in err
    assert snapshot(artifact_copy) == before  # same files, byte-identical


@pytest.mark.runtime
@no_tensorrt
def test_tensorrt_backend_without_tensorrt_raises_once_before_hashing(runtime_artifact):
    hashed = HashCache.hashed
    for lazy in (False, True):
        with pytest.raises(BackendError, match="TensorRT is not installed") as caught:
            Embedder(runtime_artifact, backend="tensorrt", options=RuntimeOptions(lazy=lazy))
        assert "JetPack" in str(caught.value)
    assert HashCache.hashed == hashed  # nothing was hashed before the error


def fake_engine_record(artifact: Path, precision: str = "fp16") -> dict:
    """A manifest record as build_engine writes it, for an engine that was never built: enough
    to test selection, which must then fall back because no TensorRT can load it here."""
    manifest = json.loads((artifact / MANIFEST).read_text())
    profile = engine_profiles(manifest)
    return {
        "path": f"model_{precision}.plan",
        "sha256": "0" * 64,
        "bytes": 1,
        "precision": precision,
        "source_onnx": {"path": f"model_{precision}.onnx", "sha256": "1" * 64},
        "tensorrt_version": "10.3.0.30",
        "gpu": {"name": "Orin", "compute_capability": "8.7"},
        "profile": profile.to_dict(),
        "shapes": profile_shapes(manifest["inputs"], profile),
        "trtexec": "trtexec --onnx=model_fp16.onnx --saveEngine=model_fp16.plan",
    }


@pytest.mark.runtime
def test_auto_backend_falls_back_to_onnxruntime_when_no_engine_can_run(artifact_copy):
    manifest = json.loads((artifact_copy / MANIFEST).read_text())
    manifest["engines"] = {"fp16": fake_engine_record(artifact_copy)}
    (artifact_copy / MANIFEST).write_text(json.dumps(manifest))
    running = probe_device()
    if running is not None and running.compute_capability == "8.7":
        pytest.skip("this machine could load the recorded Orin engine")
    embedder = Embedder(artifact_copy)  # backend="auto"
    assert embedder.backend_name == "onnxruntime" and embedder.precision == "fp32"
    assert embedder.encode(texts=["a"]).shape == (1, embedder.dim)
    with pytest.raises(BackendError):  # asked explicitly: TensorRT missing or engine mismatch
        Embedder(artifact_copy, backend="tensorrt")


def test_lame_export_trt_without_tensorrt_leaves_the_artifact_intact(trained_ckpt, artifact_copy, capsys):
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed: the missing-TensorRT path cannot be shown")
    from lame_export.cli import main

    before = snapshot(artifact_copy)
    code = main(["--ckpt", str(trained_ckpt), "--out", str(artifact_copy), "--trt", "fp16"])
    captured = capsys.readouterr()
    assert code != 0
    assert captured.err.count("\n") == 1 and "TensorRT is not installed" in captured.err
    assert captured.out == ""
    assert snapshot(artifact_copy) == before


needs_gpu_tensorrt = pytest.mark.skipif(
    not HAS_TENSORRT or probe_device() is None,
    reason="needs TensorRT 10/11 and an NVIDIA GPU (only on a real install)",
)


@needs_gpu_tensorrt
@pytest.mark.parametrize("precision", ["fp16"])
def test_build_and_serve_an_engine(artifact_copy, precision):
    """On a real TensorRT install: build, record, run; embeddings agree with ONNX Runtime."""
    from lame_runtime.engines.tensorrt.build import EngineBuildOptions, build_engine

    record = build_engine(artifact_copy, EngineBuildOptions(precision=precision, profile={"max_batch": 4}))
    manifest = json.loads((artifact_copy / MANIFEST).read_text())
    assert manifest["engines"][precision] == record
    assert (artifact_copy / record["path"]).is_file()
    texts = [f"the digits are {i} and {i + 1}" for i in range(7)]  # 7 > max batch 4: split
    engine = Embedder(artifact_copy, backend="tensorrt", precision=precision)
    reference = Embedder(artifact_copy, backend="onnxruntime", precision=precision)
    cosine = np.sum(engine.encode(texts=texts) * reference.encode(texts=texts), axis=1)
    assert cosine.min() > 0.99
