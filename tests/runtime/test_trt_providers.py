"""ONNX Runtime providers: parsing, defaults, and fallback detection on a real CPU session."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from runtime_fixtures import runtime_artifact  # noqa: F401  (a fixture)

from lame_runtime import Embedder, RuntimeOptions
from lame_runtime.engines.providers import (
    CPU_EP,
    CUDA_EP,
    TENSORRT_EP,
    ProviderDefaults,
    check_fallback,
    default_providers,
    normalize_providers,
    parse_provider_arg,
    prepare_cache_dir,
    resolve_providers,
)
from lame_runtime.errors import BackendError, InputError, InputTypeError

pytestmark = pytest.mark.runtime
HAS_CUDA_EP = CUDA_EP in ort.get_available_providers()


def test_normalize_accepts_what_onnxruntime_accepts():
    assert normalize_providers(["CPUExecutionProvider"]) == [(CPU_EP, {})]
    assert normalize_providers(
        [(CUDA_EP, {"device_id": 1, "do_copy_in_default_stream": True}), [CPU_EP, {}]]
    ) == [(CUDA_EP, {"device_id": "1", "do_copy_in_default_stream": "1"}), (CPU_EP, {})]
    for bad, error, message in [
        ("CPUExecutionProvider", InputTypeError, "must be a list"),
        ([42], InputTypeError, r"providers\[0\] must be a provider name"),
        ([(CUDA_EP, "device_id=1")], InputTypeError, "options of CUDAExecutionProvider"),
        ([(CUDA_EP, {1: "x"})], InputTypeError, "option names"),
        (["cuda"], InputError, "not an ONNX Runtime provider name"),
        ([CPU_EP, (CPU_EP, {})], InputError, "listed twice"),
    ]:
        with pytest.raises(error, match=message):
            normalize_providers(bad)


def test_parse_provider_arg():
    assert parse_provider_arg("CUDAExecutionProvider:device_id=1;gpu_mem_limit=1024,cpu") == [
        (CUDA_EP, {"device_id": "1", "gpu_mem_limit": "1024"}),
        CPU_EP,
    ]
    assert parse_provider_arg("tensorrt, CPUExecutionProvider") == [TENSORRT_EP, CPU_EP]
    with pytest.raises(InputError, match="key=value"):
        parse_provider_arg("cuda:device_id")
    with pytest.raises(InputError, match="empty"):
        parse_provider_arg(" , ")


def test_defaults_and_order(tmp_path):
    every = [TENSORRT_EP, CUDA_EP, CPU_EP]
    # the TensorRT EP is never first by default: without a cache it rebuilds per process
    assert default_providers(every) == [CUDA_EP, CPU_EP]
    assert default_providers([CPU_EP]) == [CPU_EP]
    defaults = ProviderDefaults(
        device_id=2, precision="fp16", profile_shapes={"trt_profile_max_shapes": "input_ids:8x53"}
    )
    resolved, missing = resolve_providers(
        [(TENSORRT_EP, {"trt_fp16_enable": "0"}), CUDA_EP], every, tmp_path, defaults
    )
    trt_options = dict(resolved)[TENSORRT_EP]
    assert trt_options["trt_fp16_enable"] == "0"  # the user's option wins over the default
    assert trt_options["trt_engine_cache_enable"] == "1"
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "trt_cache")
    assert trt_options["trt_timing_cache_enable"] == "1"
    assert trt_options["trt_profile_max_shapes"] == "input_ids:8x53"
    assert trt_options["device_id"] == "2" and dict(resolved)[CUDA_EP] == {"device_id": "2"}
    assert [name for name, _ in resolved] == every and missing == []
    fp32 = dict(
        resolve_providers([TENSORRT_EP], every, tmp_path, ProviderDefaults(cache_dir=tmp_path / "c"))[0]
    )[TENSORRT_EP]
    assert fp32["trt_fp16_enable"] == "0" and fp32["trt_engine_cache_path"] == str(tmp_path / "c")
    resolved, missing = resolve_providers([(CUDA_EP, {"device_id": 1})], [CPU_EP], tmp_path)
    assert resolved == [(CPU_EP, {})] and missing == [CUDA_EP]


def test_tensorrt_ep_cache_folder_is_created_or_named(tmp_path):
    every = [TENSORRT_EP, CPU_EP]
    resolved, _ = resolve_providers(
        [TENSORRT_EP], every, tmp_path, ProviderDefaults(cache_dir=tmp_path / "cache")
    )
    prepare_cache_dir(resolved)
    assert (tmp_path / "cache").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    resolved, _ = resolve_providers(
        [TENSORRT_EP], every, tmp_path, ProviderDefaults(cache_dir=blocker / "cache")
    )
    with pytest.raises(BackendError, match="cannot create the TensorRT EP cache folder"):
        prepare_cache_dir(resolved)


def test_check_fallback():
    assert check_fallback([CPU_EP], [CPU_EP]) == []
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider .not in this ONNX Runtime"):
        assert check_fallback([CUDA_EP, CPU_EP], [CPU_EP], unavailable=[CUDA_EP]) == [CUDA_EP]
    with pytest.raises(BackendError, match="TensorrtExecutionProvider .failed to start"):
        check_fallback([TENSORRT_EP], [CUDA_EP, CPU_EP], strict=True)


def test_embedder_with_provider_options_on_a_real_cpu_session(runtime_artifact):
    reference = Embedder(runtime_artifact)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the CPU provider is what we asked
        tuned = Embedder(
            runtime_artifact,
            options=RuntimeOptions(providers=[(CPU_EP, {"arena_extend_strategy": "kSameAsRequested"})]),
        )
    assert tuned._backend.providers == [CPU_EP]
    texts = ["the digits are 1 and 2", "a"]
    np.testing.assert_allclose(tuned.encode(texts=texts), reference.encode(texts=texts), atol=1e-6)


@pytest.mark.skipif(
    HAS_CUDA_EP, reason="this ONNX Runtime has CUDA: the CPU-build fallback cannot be shown here"
)
def test_unavailable_cuda_provider_warns_with_its_name(runtime_artifact):
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider") as caught:
        embedder = Embedder(runtime_artifact, options=RuntimeOptions(providers=[(CUDA_EP, {"device_id": 1})]))
    assert len(caught) == 1
    assert embedder._backend.providers == [CPU_EP]  # it still runs, on the CPU
    assert embedder._backend.fallback == [CUDA_EP]
    assert embedder.encode(texts=["x"]).shape == (1, embedder.dim)
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        Embedder(runtime_artifact, options=RuntimeOptions(providers=[CUDA_EP, CPU_EP], strict_providers=True))


def test_query_json_stdout_stays_json_with_a_fallback(runtime_artifact, tmp_path):
    """ORT's and our messages go to stderr: `--json` stdout must parse, even on a fallback."""
    from PIL import Image

    from lame_runtime.cli.search import main

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(images / f"{i}.png")
    index = tmp_path / "index"
    assert (
        main(
            [
                "index",
                "--model",
                str(runtime_artifact),
                "--images",
                str(images),
                "--out",
                str(index),
                "--no-progress",
            ]
        )
        == 0
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "lame_runtime.cli.search",
            "query",
            "the digits",
            "--model",
            str(runtime_artifact),
            "--index",
            str(index),
            "--json",
            "-k",
            "2",
            "--providers",
            "CUDAExecutionProvider:device_id=0,cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)  # the whole of stdout is one JSON document
    assert len(result["results"]) == 2
    if not HAS_CUDA_EP:
        assert "CUDAExecutionProvider" in run.stderr
