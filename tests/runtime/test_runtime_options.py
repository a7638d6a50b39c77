"""Embedder(path, precision, backend, device_id, options=RuntimeOptions(...)): the old keywords
still work with a DeprecationWarning naming the new spelling and give the same Embedder; a GPU
provider that was asked for and is absent is never silent (warning once, or BackendError when
strict); fp16 on the CPU provider is one warning per Embedder."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from runtime_fixtures import runtime_artifact  # noqa: F401

from lame_runtime import BackendError, Embedder, RuntimeOptions
from lame_runtime.cli.search import main as search_main
from lame_runtime.engines.providers import CPU_EP, TENSORRT_EP
from lame_runtime.inputs.pipeline import PipelineOptions
from lame_runtime.options import TENSORRT_EP_PROVIDERS

pytestmark = pytest.mark.runtime

HAS_TENSORRT_EP = TENSORRT_EP in ort.get_available_providers()
no_trt_ep = pytest.mark.skipif(HAS_TENSORRT_EP, reason="this ONNX Runtime has the TensorRT EP")
TEXTS = ["the digits are 1 and 2", "a"]


def _runtime_warnings(caught, text):
    return [w for w in caught if issubclass(w.category, RuntimeWarning) and text in str(w.message)]


def test_constructor_is_small_and_options_are_documented():
    parameters = inspect.signature(Embedder.__init__).parameters
    assert list(parameters)[:6] == ["self", "path", "precision", "backend", "device_id", "options"]
    assert len(parameters) <= 8
    for field in dataclasses.fields(RuntimeOptions):
        assert f"{field.name}:" in inspect.getsource(RuntimeOptions), field.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        RuntimeOptions().threads = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "old, new",
    [
        ({"threads": 1}, {"threads": 1}),
        ({"spin": False}, {"spin": False}),
        ({"lazy": True}, {"lazy": True}),
        ({"verify": False}, {"verify": False}),
        ({"route_text": False}, {"route_text": False}),
        ({"share_weights": False}, {"share_weights": False}),
        ({"max_pixels": 10_000}, {"max_pixels": 10_000}),
        ({"strict": True}, {"strict_providers": True}),
        ({"providers": [CPU_EP]}, {"providers": [CPU_EP]}),
        ({"pipeline_options": PipelineOptions(workers=2)}, {"pipeline": PipelineOptions(workers=2)}),
    ],
)
def test_old_keyword_warns_with_the_new_spelling_and_is_equivalent(runtime_artifact, old, new):
    (key, value), (field, _) = next(iter(old.items())), next(iter(new.items()))
    with pytest.warns(DeprecationWarning) as caught:
        legacy = Embedder(runtime_artifact, **old)
    message = str(caught[0].message)
    assert message.startswith(f"Embedder({key}={value!r}) is deprecated")
    assert f"options=RuntimeOptions({field}=" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        modern = Embedder(runtime_artifact, options=RuntimeOptions(**new))
    assert legacy.options == modern.options
    np.testing.assert_array_equal(legacy.encode(TEXTS), modern.encode(TEXTS))


def test_old_positional_backend_still_works(runtime_artifact):
    with pytest.warns(DeprecationWarning, match="backend before precision"):
        embedder = Embedder(runtime_artifact, "onnxruntime", "fp32")
    assert (embedder.backend_name, embedder.precision) == ("onnxruntime", "fp32")


def test_unknown_keyword_is_named(runtime_artifact):
    with pytest.raises(TypeError, match="threadz"):
        Embedder(runtime_artifact, threadz=2)


@no_trt_ep
def test_deprecated_tensorrt_ep_on_a_cpu_build_warns_once_naming_both_providers(runtime_artifact):
    # Before: tensorrt_ep=True dropped the absent TensorRT EP without a word and ran on the CPU.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embedder = Embedder(runtime_artifact, tensorrt_ep=True)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    fallback = _runtime_warnings(caught, TENSORRT_EP)
    assert len(fallback) == 1, [str(w.message) for w in caught]  # once, though two graphs load
    assert CPU_EP in str(fallback[0].message)  # the provider actually used
    assert embedder.encode(TEXTS).shape == (2, embedder.dim)
    with pytest.warns(DeprecationWarning), pytest.raises(BackendError, match=TENSORRT_EP):
        Embedder(runtime_artifact, tensorrt_ep=True, strict=True)


@no_trt_ep
def test_tensorrt_provider_new_spelling_warns_or_raises_when_strict(runtime_artifact):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Embedder(runtime_artifact, options=RuntimeOptions(providers=TENSORRT_EP_PROVIDERS))
    fallback = _runtime_warnings(caught, TENSORRT_EP)
    assert len(fallback) == 1 and CPU_EP in str(fallback[0].message)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]
    strict = RuntimeOptions(providers=[TENSORRT_EP, CPU_EP], strict_providers=True)
    with pytest.raises(BackendError, match=TENSORRT_EP):
        Embedder(runtime_artifact, options=strict)


@no_trt_ep
def test_cli_tensorrt_provider_strict_is_one_error_line(runtime_artifact, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "a.png")
    args = ["index", "--model", str(runtime_artifact), "--images", str(images)]
    args += ["--out", str(tmp_path / "index"), "--providers", "tensorrt", "--strict-providers"]
    assert search_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lame-search: error:") and TENSORRT_EP in err[0]
    assert not (tmp_path / "index").exists()


def test_fp16_on_the_cpu_provider_is_one_warning_per_embedder(runtime_artifact):
    if "fp16" not in Embedder(runtime_artifact, options=RuntimeOptions(lazy=True)).artifact.precisions:
        pytest.skip("the artifact has no fp16 graph")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embedder = Embedder(runtime_artifact, precision="fp16")
        embedder.encode(TEXTS)
        embedder.encode(images=[np.zeros((16, 16, 3), np.uint8)])
    fp16 = _runtime_warnings(caught, "fp16")
    assert len(fp16) == 1, [str(w.message) for w in caught]
    message = str(fp16[0].message)
    assert "\n" not in message and "int8" in message and "int4" in message and CPU_EP in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Embedder(runtime_artifact, precision="fp32")
    assert not _runtime_warnings(caught, "fp16")


def test_options_are_checked_before_anything_is_opened(tmp_path: Path):
    with pytest.raises(ValueError, match="threads"):
        RuntimeOptions(threads=0)
    with pytest.raises(TypeError, match="RuntimeOptions"):
        Embedder(tmp_path / "absent", options={"threads": 2})  # type: ignore[arg-type]
