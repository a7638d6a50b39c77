"""TensorRT engine metadata without TensorRT: profiles, trtexec line, compatibility, selection."""

from __future__ import annotations

import copy
import shlex

import pytest

from lame_runtime.engines.tensorrt.meta import (
    DeviceInfo,
    EngineProfile,
    check_engine_compatible,
    engine_incompatibility,
    engine_profiles,
    profile_shapes,
    select_backend,
    trtexec_command,
    validate_engines_section,
)
from lame_runtime.errors import ArtifactError, BackendError, InputError

pytestmark = pytest.mark.runtime

INPUTS = [
    {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
    {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]},
    {"name": "pixel_values", "dtype": "float32", "shape": ["batch", 16, 48]},
    {"name": "image_mask", "dtype": "int64", "shape": ["batch"]},
]
MANIFEST = {
    "inputs": INPUTS,
    "num_image_tokens": 4,
    "max_text_tokens": 48,
    "max_batch": 64,
    "max_sequence": 512,
}
ORIN = DeviceInfo("10.3.0.30", "Orin", "8.7")


def record(precision="fp16", version="10.3.0.30", cc="8.7"):
    profile = engine_profiles(MANIFEST)
    return {
        "path": f"model_{precision}.plan",
        "sha256": "0" * 64,
        "bytes": 10,
        "precision": precision,
        "source_onnx": {"path": f"model_{precision}.onnx", "sha256": "1" * 64},
        "tensorrt_version": version,
        "gpu": {"name": "Orin", "compute_capability": cc},
        "profile": profile.to_dict(),
        "shapes": profile_shapes(INPUTS, profile),
        "trtexec": "trtexec --onnx=model_fp16.onnx",
    }


def test_default_profile_comes_from_the_manifest():
    profile = engine_profiles(MANIFEST)
    longest = 1 + MANIFEST["num_image_tokens"] + MANIFEST["max_text_tokens"]
    assert profile.batch.as_list() == [1, 32, MANIFEST["max_batch"]]
    assert profile.sequence.as_list() == [2, longest, longest]
    small = dict(MANIFEST, max_batch=8)
    assert engine_profiles(small).batch.as_list() == [1, 8, 8]  # opt never above max
    old = {k: v for k, v in MANIFEST.items() if k not in ("max_batch", "max_sequence")}
    assert engine_profiles(old).batch.max == 64  # artifacts without the bounds: exporter default
    assert engine_profiles(dict(MANIFEST, max_sequence=20)).sequence.max == 20


def test_profile_overrides_and_their_errors():
    profile = engine_profiles(
        MANIFEST, {"max_batch": 16, "opt_batch": 4, "opt_sequence": 10, "min_sequence": None}
    )
    assert profile.batch.as_list() == [1, 4, 16]
    assert profile.sequence.as_list()[:2] == [2, 10]
    with pytest.raises(InputError, match="min <= opt <= max"):
        engine_profiles(MANIFEST, {"min_batch": 8, "opt_batch": 4})
    with pytest.raises(InputError, match="exceeds the exported graph"):
        engine_profiles(MANIFEST, {"max_batch": 65})
    with pytest.raises(InputError, match="longest row"):
        engine_profiles(MANIFEST, {"max_sequence": 54})
    with pytest.raises(InputError, match="unknown profile overrides"):
        engine_profiles(MANIFEST, {"max_tokens": 3})
    with pytest.raises(InputError, match="positive integer"):
        engine_profiles(MANIFEST, {"opt_batch": 0})
    with pytest.raises(ArtifactError, match="num_image_tokens"):
        engine_profiles({"inputs": INPUTS, "max_text_tokens": 3})


def test_profile_shapes_and_trtexec_line():
    profile = EngineProfile.from_dict({"batch": [1, 4, 8], "sequence": [2, 30, 53]})
    shapes = profile_shapes(INPUTS, profile)
    assert shapes["input_ids"] == [[1, 2], [4, 30], [8, 53]]
    assert shapes["pixel_values"] == [[1, 16, 48], [4, 16, 48], [8, 16, 48]]
    assert shapes["image_mask"] == [[1], [4], [8]]
    line = trtexec_command("model_fp16.onnx", "model_fp16.plan", shapes, 2048, "trt cache/t.c")
    args = shlex.split(line)
    assert args[:4] == [
        "trtexec",
        "--onnx=model_fp16.onnx",
        "--saveEngine=model_fp16.plan",
        "--stronglyTyped",
    ]
    assert ("--maxShapes=input_ids:8x53,attention_mask:8x53,pixel_values:8x16x48,image_mask:8") in args
    assert "--memPoolSize=workspace:2048M" in args and "--timingCacheFile=trt cache/t.c" in args
    with pytest.raises(ArtifactError, match="unknown dynamic dim"):
        profile_shapes([{"name": "x", "dtype": "int64", "shape": ["tokens"]}], profile)


def test_engine_compatibility():
    assert engine_incompatibility(record(), ORIN) is None
    # the 4th version field is the build number: same release, same engine format
    assert engine_incompatibility(record(version="10.3.0.26"), ORIN) is None
    assert "TensorRT 10.7.0.23" in engine_incompatibility(record(version="10.7.0.23"), ORIN)
    assert "compute capability 8.6" in engine_incompatibility(record(cc="8.6"), ORIN)
    assert "lacks" in engine_incompatibility({"gpu": {}}, ORIN)
    with pytest.raises(
        BackendError,
        match=r"cannot run here: .*TensorRT 11\.0\.0.*"
        r"lame-search build-engine /a --precision fp16",
    ):
        check_engine_compatible(record(version="11.0.0.1"), ORIN, "/a", "fp16")


def test_engines_section_validation():
    assert validate_engines_section({}) == {}
    good = {"engines": {"fp16": record()}}
    assert validate_engines_section(good)["fp16"]["path"] == "model_fp16.plan"
    for mutate, message in [
        (lambda e: e.__setitem__("fp32", e.pop("fp16")), "precision must be one of"),
        (lambda e: e["fp16"].pop("sha256"), "'sha256' must be a str"),
        (lambda e: e["fp16"].__setitem__("precision", "int8"), "does not match"),
        (lambda e: e["fp16"]["gpu"].__setitem__("compute_capability", 8.7), "string like"),
        (lambda e: e["fp16"].__setitem__("profile", {"batch": [1, 2, 3]}), "profile must have"),
    ]:
        bad = copy.deepcopy(good)
        mutate(bad["engines"])
        with pytest.raises(ArtifactError, match=message):
            validate_engines_section(bad)
    with pytest.raises(ArtifactError, match="must be an object"):
        validate_engines_section({"engines": []})


def test_backend_selection():
    none = dict(MANIFEST)
    both = dict(MANIFEST, engines={"fp16": record(), "int8": record("int8")})
    int8_only = dict(MANIFEST, engines={"int8": record("int8")})
    old = dict(MANIFEST, engines={"fp16": record(version="8.6.1")})
    assert select_backend(none, "auto", "auto", ORIN) == ("onnxruntime", "fp32")
    assert select_backend(both, "auto", "auto", ORIN) == ("tensorrt", "fp16")
    assert select_backend(both, "auto", "auto", None) == ("onnxruntime", "fp32")  # no TensorRT
    assert select_backend(both, "auto", "int8", ORIN) == ("tensorrt", "int8")
    assert select_backend(int8_only, "auto", "fp16", ORIN) == ("onnxruntime", "fp16")
    assert select_backend(old, "auto", "auto", ORIN) == ("onnxruntime", "fp32")  # incompatible
    assert select_backend(both, "onnxruntime", "auto", ORIN) == ("onnxruntime", "fp32")
    assert select_backend(int8_only, "tensorrt", "auto", ORIN) == ("tensorrt", "int8")
    with pytest.raises(BackendError, match="build-engine"):
        select_backend(none, "tensorrt", "auto", ORIN)
