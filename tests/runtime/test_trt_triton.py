"""Triton model repository: configs parse as ModelConfig, match the ONNX graph, ensemble wiring."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import runtime_artifact  # noqa: F401  (a fixture)

from lame_runtime import Embedder
from lame_runtime.artifact.contract import MANIFEST
from lame_runtime.deploy.triton import (
    MARKER,
    TritonOptions,
    decode_rows,
    preprocess_request,
    write_model_repository,
)
from lame_runtime.errors import ArtifactError, InputError
from lame_runtime.inputs.preprocess import Preprocessor

text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

ONNX_TYPES = {1: "TYPE_FP32", 7: "TYPE_INT64", 10: "TYPE_FP16"}  # onnx.TensorProto codes


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def png_bytes(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def graph_io(onnx_path: Path):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def describe(values):
        return {
            v.name: (
                ONNX_TYPES[v.type.tensor_type.elem_type],
                [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        }

    initializers = {i.name for i in graph.initializer}
    return describe([i for i in graph.input if i.name not in initializers]), describe(graph.output)


def effective_dims(tensor) -> list[int]:
    """Triton dims as the model sees them (reshape applied), batch dimension prepended."""
    dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
    return [-1, *dims]


@pytest.mark.runtime
@pytest.mark.parametrize("precision,accelerator", [("fp32", False), ("fp16", True)])
def test_repository_configs_match_the_onnx_graph(runtime_artifact, tmp_path, precision, accelerator):
    repo = tmp_path / "repo"
    summary = write_model_repository(
        runtime_artifact, repo, TritonOptions(precision=precision, trt_accelerator=accelerator, instances=2)
    )
    manifest = json.loads((runtime_artifact / MANIFEST).read_text())
    names = summary["models"]
    assert sorted(p.name for p in repo.iterdir()) == sorted([*names.values(), MARKER])
    embed = parse(repo / names["embed"] / "config.pbtxt")
    pre = parse(repo / names["preprocess"] / "config.pbtxt")
    ensemble = parse(repo / names["ensemble"] / "config.pbtxt")

    # the embedding model against the graph file it serves
    assert embed.platform == "onnxruntime_onnx" and embed.max_batch_size == manifest["max_batch"]
    onnx_file = repo / names["embed"] / "1" / embed.default_model_filename
    assert onnx_file.read_bytes() == (runtime_artifact / onnx_file.name).read_bytes()
    graph_inputs, graph_outputs = graph_io(onnx_file)
    for declared, graph in ((embed.input, graph_inputs), (embed.output, graph_outputs)):
        assert [t.name for t in declared] == list(graph)
        for tensor in declared:
            dtype, dims = graph[tensor.name]
            assert model_config_pb2.DataType.Name(tensor.data_type) == dtype
            assert len(effective_dims(tensor)) == len(dims)
            for want, got in zip(effective_dims(tensor), dims):
                assert want == got or -1 in (want, got), (tensor.name, want, got)
    assert embed.HasField("dynamic_batching")
    assert embed.instance_group[0].count == 2
    accelerators = embed.optimization.execution_accelerators.gpu_execution_accelerator
    assert bool(accelerators) == accelerator
    if accelerator:
        assert accelerators[0].name == "tensorrt"
        assert accelerators[0].parameters["precision_mode"] == "FP16"

    # preprocessing produces exactly what the embedding model takes (Triton-side shapes; the
    # embedding model alone reshapes batch-only tensors for its graph)
    assert pre.backend == "python"
    assert [(t.name, t.data_type, list(t.dims)) for t in pre.output] == [
        (t.name, t.data_type, list(t.dims)) for t in embed.input
    ]
    assert not any(t.HasField("reshape") for t in pre.output)
    assert [t.name for t in embed.input if t.HasField("reshape")] == ["image_mask"]
    assert [t.name for t in pre.input] == ["TEXT", "IMAGE"]
    assert all(model_config_pb2.DataType.Name(t.data_type) == "TYPE_STRING" for t in pre.input)
    model_dir = repo / names["preprocess"] / "1"
    assert {p.name for p in model_dir.iterdir()} >= {"model.py", "tokenizer.json", "preprocessor_config.json"}

    # ensemble: every mapped tensor exists on both sides, types agree, everything is wired
    assert ensemble.platform == "ensemble"
    models = {names["preprocess"]: pre, names["embed"]: embed}
    produced = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = models[step.model_name]
        model_inputs = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        assert set(step.input_map) == set(model_inputs)  # every input fed
        for key, value in step.input_map.items():
            assert produced[value] == model_inputs[key], (step.model_name, key)
        model_outputs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        for key, value in step.output_map.items():
            produced[value] = model_outputs[key]
    for tensor in ensemble.output:
        assert produced[tensor.name] == (tensor.data_type, list(tensor.dims))
    assert [t.name for t in ensemble.output] == ["EMBEDDING"]
    assert list(ensemble.output[0].dims) == [manifest["embedding_dim"]]


@pytest.mark.runtime
def test_tensorrt_plan_repository_and_repo_safety(runtime_artifact, tmp_path):
    with pytest.raises(ArtifactError, match="no fp16 TensorRT engine"):
        write_model_repository(
            runtime_artifact, tmp_path / "r", TritonOptions(precision="fp16", platform="tensorrt_plan")
        )
    # Config generation for an engine: a copy of the artifact with a recorded plan file (the
    # bytes are not an engine; Triton would load it, this test only checks the config).
    from test_trt_build import fake_engine_record

    art = tmp_path / "artifact"
    shutil.copytree(runtime_artifact, art)
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["engines"] = {"fp16": fake_engine_record(art)}
    (art / MANIFEST).write_text(json.dumps(manifest))
    (art / "model_fp16.plan").write_bytes(b"plan")
    repo = tmp_path / "repo"
    summary = write_model_repository(art, repo, TritonOptions(precision="fp16"))
    embed = parse(repo / "lame_embed" / "config.pbtxt")
    assert summary["platform"] == "tensorrt_plan" and embed.platform == "tensorrt_plan"
    assert embed.default_model_filename == "model_fp16.plan"
    assert embed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    with pytest.raises(FileExistsError, match="--force"):
        write_model_repository(art, repo, TritonOptions(precision="fp16"))
    write_model_repository(art, repo, TritonOptions(force=True))  # ours: replaced
    assert parse(repo / "lame_embed" / "config.pbtxt").platform == "onnxruntime_onnx"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_model_repository(art, other, TritonOptions(force=True))
    assert (other / "keep.txt").read_text() == "x"


@pytest.mark.runtime
def test_preprocess_request_is_the_runtime_preprocessing(runtime_artifact):
    preprocessor = Preprocessor.from_dir(runtime_artifact)
    texts = np.array([[b"the digits are 1 and 2"], [b""], ["a caf\u00e9".encode()]], dtype=object)
    images = np.array([[b""], [png_bytes(1)], [png_bytes(2)]], dtype=object)
    feed = preprocess_request(preprocessor, texts, images)
    decoded_texts, decoded_images = decode_rows(texts, images)
    assert decoded_texts == ["the digits are 1 and 2", None, "a caf\u00e9"]
    assert decoded_images[0] is None
    expected = preprocessor(decoded_texts, decoded_images)
    assert feed["image_mask"].shape == (3, 1)  # batch-only tensors travel as [batch, 1]
    graph_feed = {name: value.reshape(-1) if name == "image_mask" else value for name, value in feed.items()}
    for name in expected:
        np.testing.assert_array_equal(graph_feed[name], expected[name])
    # and the embedding of that feed is the Embedder's for the same text/images
    embedder = Embedder(runtime_artifact)
    vectors = embedder.infer(graph_feed)
    from PIL import Image

    direct = embedder.encode(
        texts=["the digits are 1 and 2", None, "a caf\u00e9"],
        images=[
            None,
            np.asarray(Image.open(io.BytesIO(png_bytes(1)))),
            np.asarray(Image.open(io.BytesIO(png_bytes(2)))),
        ],
    )
    norms = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(norms, direct, atol=1e-5)
    only_text = preprocess_request(preprocessor, np.array([[b"x"]], dtype=object), None)
    assert only_text["image_mask"].tolist() == [[0]]
    for bad_texts, bad_images, message in [
        (np.array([[b"\xff"]], dtype=object), None, "not UTF-8"),
        (None, np.array([[b"not an image"]], dtype=object), "not an encoded image"),
        (np.array([[b"a"], [b"b"]], dtype=object), np.array([[b""]], dtype=object), "rows"),
        (np.array([[3]], dtype=object), None, "must be bytes"),
        (None, None, "send TEXT"),
        (np.array([[b""]], dtype=object), None, "neither text nor image"),
    ]:
        with pytest.raises((InputError, ValueError), match=message):
            preprocess_request(preprocessor, bad_texts, bad_images)


@pytest.mark.runtime
def test_triton_command_writes_the_repository(runtime_artifact, tmp_path, capsys):
    from lame_runtime.cli.search import main

    repo = tmp_path / "repo"
    code = main(
        [
            "triton",
            str(runtime_artifact),
            str(repo),
            "--name",
            "emb",
            "--max-batch",
            "8",
            "--precision",
            "fp16",
            "--trt-accelerator",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["models"]["embed"] == "emb_embed" and out["max_batch_size"] == 8
    assert parse(repo / "emb" / "config.pbtxt").max_batch_size == 8
    code = main(["triton", str(runtime_artifact), str(tmp_path / "r2"), "--max-batch", "100000"])
    assert code == 2 and "exceeds the exported graph" in capsys.readouterr().err
