"""Modality-routed graphs: the text-only graph, its gates, routing, and older artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lame_runtime.artifact.contract import MANIFEST, Artifact
from lame_runtime.errors import ArtifactError

THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}  # the export gates per precision


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_artifact_has_text_graphs_with_gates(artifact_dir):
    import onnxruntime as ort

    artifact = Artifact.open(artifact_dir)
    report = json.loads((artifact_dir / "parity.json").read_text())
    for precision in ("fp32", "fp16", "int8"):
        assert artifact.has_text_graph(precision)
        graph = artifact.file_for(precision, graph="text")
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
        gate = report["text_graph"][precision]
        assert gate["passed"] and gate["min_cosine"] >= THRESHOLDS[precision]
        assert gate["cases"] and all(label.endswith("/text") for label in gate["cases"])
    assert (
        "tensorrt_lint_text" in report and report["tensorrt_lint_text"]["ok"] == report["tensorrt_lint"]["ok"]
    )
    # the text graph really lacks the vision tower: far fewer nodes than the full graph
    import onnx

    full = onnx.load(str(artifact.file_for("fp32")), load_external_data=False)
    text = onnx.load(str(artifact.file_for("fp32", graph="text")), load_external_data=False)
    assert len(text.graph.node) < len(full.graph.node)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_routing_equals_full_graph(artifact_dir, digits_dir, precision):
    from lame_runtime import Embedder, RuntimeOptions

    images = sorted(str(p) for p in digits_dir.rglob("*.png"))[:6]
    # mixed order: text-only, image-only and text+image rows interleaved
    texts = [
        "the digits add up to 9",
        None,
        "7 3 1",
        "exactly 2 digits are greater than 6",
        None,
        "a",
        "find the image",
        None,
        "the odd digits add up to 13",
    ]
    rows = [None, images[0], images[1], None, images[2], None, images[3], images[4], None]
    routed = Embedder(artifact_dir, precision=precision)
    full = Embedder(artifact_dir, precision=precision, options=RuntimeOptions(route_text=False))
    assert routed.routes_text and not full.routes_text
    got = routed.encode(texts, rows, batch_size=4)
    want = full.encode(texts, rows, batch_size=4)
    assert _cosines(got, want).min() >= THRESHOLDS[precision]
    assert routed._text_backend is not None and full._text_backend is None
    if precision == "fp32":
        np.testing.assert_allclose(got, want, atol=1e-5)
        text_only = routed.encode(["7 3 1"])  # a lone text row: text graph only
        np.testing.assert_allclose(text_only, full.encode(["7 3 1"]), atol=1e-5)


def test_artifact_without_text_graph_still_loads(artifact_dir, tmp_path):
    from lame_runtime import Embedder, RuntimeOptions

    old = tmp_path / "old"
    shutil.copytree(artifact_dir, old)
    manifest = json.loads((old / MANIFEST).read_text())
    for entry in manifest["models"].values():
        text = entry.pop("text")
        for name in [text["path"], *text["external_data"]]:
            manifest["files"].pop(name)
            (old / name).unlink()
    (old / MANIFEST).write_text(json.dumps(manifest))
    embedder = Embedder(old)
    assert not embedder.routes_text and not embedder.artifact.has_text_graph("fp32")
    with pytest.raises(ArtifactError, match="no text-only fp32 graph"):
        embedder.artifact.file_for("fp32", graph="text")
    np.testing.assert_allclose(
        embedder.encode(["a", "b c"]), Embedder(artifact_dir).encode(["a", "b c"]), atol=1e-5
    )


def test_text_entry_must_be_listed(artifact_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(artifact_dir, bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["models"]["fp32"]["text"]["path"] = "elsewhere.onnx"
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"models\['fp32'\]\['text'\].*not listed"):
        Artifact.open(bad)


def test_corrupt_text_graph_is_refused(artifact_dir, tmp_path):
    from lame_runtime import Embedder, RuntimeOptions

    copy = tmp_path / "copy"
    shutil.copytree(artifact_dir, copy)
    (copy / ".lame_hashes.json").unlink(missing_ok=True)
    graph = copy / "model_text.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        Embedder(copy)  # eager: both graphs verified at load
    lazy = Embedder(copy, options=RuntimeOptions(lazy=True))
    lazy.encode(texts=["x"], images=[np.zeros((16, 64, 3), dtype=np.uint8)])  # full graph: fine
    with pytest.raises(ArtifactError, match="sha256"):
        lazy.encode(texts=["x"])  # the first text-only row needs the text graph
