"""Export with external data (forced on the tiny model), the file table, and its runtime checks."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from lame_export.cli import main as export_main
from lame_export.onnx_export import reason_token_initializer
from lame_export.pipeline import ExportGateError, ExportOptions, export_checkpoint
from lame_runtime import Embedder, RuntimeOptions
from lame_runtime.artifact.contract import HASH_CACHE, MANIFEST, Artifact
from lame_runtime.artifact.files import external_data_locations
from lame_runtime.errors import ArtifactError, GateError
from lame_runtime.persist import sha256

GRAPHS = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}


@pytest.fixture(scope="module")
def external_artifact(trained_ckpt, digits_dir, tmp_path_factory) -> Path:
    """fp32 + fp16 + int8 with external data forced by a zero threshold; parity gates on."""
    from lame_calibration import build

    root = tmp_path_factory.mktemp("external")
    calib = build(digits_dir, trained_ckpt, root / "calib.npz", size=16)
    out = root / "art"
    report = export_checkpoint(
        trained_ckpt,
        out,
        ExportOptions(fp16=True, int8=True, calib_file=str(calib), external_data_threshold=0),
    )
    assert report["external_data"] and not report["failures"]
    return out


def copy_of(artifact: Path, tmp_path: Path, name: str = "copy") -> Path:
    copy = tmp_path / name
    shutil.copytree(artifact, copy)
    return copy


def rewrite_manifest(folder: Path, edit) -> None:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def relist(folder: Path, manifest: dict, name: str) -> None:
    """What an attacker who can also edit the manifest does: record a file's new hash."""
    manifest["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)}


def test_every_precision_has_a_data_file_and_passes_parity(external_artifact):
    manifest = json.loads((external_artifact / MANIFEST).read_text())
    report = json.loads((external_artifact / "parity.json").read_text())
    fp32_bytes = (external_artifact / f"{GRAPHS['fp32']}.data").stat().st_size
    for precision, graph in GRAPHS.items():
        data = f"{graph}.data"
        entry = manifest["models"][precision]
        assert (entry["path"], entry["external_data"]) == (graph, [data])
        # the big weights are there: int8's are a quarter of fp32's bytes, plus scales
        assert (external_artifact / data).stat().st_size > 0.2 * fp32_bytes
        assert report[precision]["passed"], precision
        # the runtime's protobuf walker agrees with onnx itself
        proto = onnx.load(str(external_artifact / graph), load_external_data=False)
        locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {data} == set(external_data_locations(external_artifact / graph))
    assert report["int8"]["min_cosine"] >= 0.99 and report["fp16"]["min_cosine"] >= 0.999
    ops = {n.op_type for n in onnx.load(str(external_artifact / GRAPHS["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_embeddings_match_the_inline_artifact(external_artifact, artifact_dir):
    texts = ["the digits add up to 9", None]
    images = [None, np.full((16, 64, 3), 200, dtype=np.uint8)]
    for precision in GRAPHS:
        a = Embedder(external_artifact, precision=precision).encode(texts, images)
        b = Embedder(artifact_dir, precision=precision).encode(texts, images)
        tolerance = 1e-5 if precision == "fp32" else 2e-2  # int8: two calibrations differ
        assert np.abs(a - b).max() < tolerance, precision


def test_manifest_lists_and_hashes_every_file(external_artifact, artifact_dir):
    for folder in (external_artifact, artifact_dir):
        manifest = json.loads((folder / MANIFEST).read_text())
        on_disk = {p.name for p in folder.iterdir() if p.name not in (MANIFEST, HASH_CACHE)}
        assert set(manifest["files"]) == on_disk
        for name, entry in manifest["files"].items():
            assert entry["sha256"] == sha256(folder / name), name
            assert entry["bytes"] == (folder / name).stat().st_size, name
    inline = json.loads((artifact_dir / MANIFEST).read_text())
    assert {"tokenizer.json", "preprocessor_config.json", "calib.npz", "parity.json"} <= set(inline["files"])
    assert inline["files"]["calib.npz"]["required"] is False
    assert inline["models"]["fp32"]["external_data"] == []


def test_reason_tokens_found_by_name_in_external_data(external_artifact, trained_ckpt):
    from safetensors.torch import load_file

    report = json.loads((external_artifact / "parity.json").read_text())
    name = report["graph"]["reason_tokens_initializer"]
    assert name is not None
    assert report["graph"]["inputs"] == ["input_ids", "attention_mask", "pixel_values", "image_mask"]
    tokens = load_file(str(trained_ckpt / "model.safetensors"))["reason_tokens"].numpy()
    graph = external_artifact / "model.onnx"
    assert reason_token_initializer(graph, tokens) == name
    assert reason_token_initializer(graph, tokens + 0.5) is None


def test_tampered_data_file_is_refused(external_artifact, tmp_path):
    copy = copy_of(external_artifact, tmp_path)
    data = copy / "model.onnx.data"
    with open(data, "r+b") as handle:  # same size: only the hash can tell
        handle.seek(data.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match=r"model\.onnx\.data does not match the sha256"):
        Embedder(copy)
    Embedder(copy, precision="fp16")  # the other precisions are intact
    # verify=False (devices that check at install time) skips the hash, not the other checks
    Embedder(copy, options=RuntimeOptions(verify=False))
    with pytest.raises(ArtifactError, match=r"model\.onnx\.data does not match"):
        Artifact.open(copy, verify=False).verify_all()


def test_truncated_or_missing_data_file_is_refused(external_artifact, tmp_path):
    copy = copy_of(external_artifact, tmp_path)
    with open(copy / "model_fp16.onnx.data", "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(ArtifactError, match=r"model_fp16\.onnx\.data has 100 bytes"):
        Embedder(copy, options=RuntimeOptions(verify=False))
    (copy / "model_fp16.onnx.data").unlink()
    with pytest.raises(ArtifactError, match=r"model_fp16\.onnx\.data, listed in .* is missing"):
        Embedder(copy)


def _point_graph_at(folder: Path, location: str, listed: bool = True) -> None:
    """Rewrite model.onnx's external-data location (and, if ``listed``, the manifest)."""
    proto = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(folder / "model.onnx"))

    def edit(manifest):
        relist(folder, manifest, "model.onnx")
        if listed:
            manifest["models"]["fp32"]["external_data"] = [location]

    rewrite_manifest(folder, edit)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "unlisted"])
def test_external_data_cannot_escape_the_artifact(external_artifact, tmp_path, kind):
    copy = copy_of(external_artifact, tmp_path)
    outside = tmp_path / "outside.data"
    shutil.copy(copy / "model.onnx.data", outside)
    if kind == "dotdot":
        _point_graph_at(copy, "../outside.data", listed=False)
        match = r"'\.\./outside\.data' escapes the artifact folder"
    elif kind == "absolute":
        _point_graph_at(copy, str(outside), listed=False)
        match = "absolute path .* is not allowed"
    elif kind == "symlink":
        (copy / "link.data").symlink_to(outside)
        _point_graph_at(copy, "link.data", listed=False)
        match = "resolves to .*outside the artifact folder"
    else:
        shutil.copy(outside, copy / "other.data")
        _point_graph_at(copy, "other.data", listed=False)
        match = "refers to external data 'other.data' that lame_artifact.json does not list"
    for verify in (True, False):  # checked before ONNX Runtime opens the graph, either way
        with pytest.raises(ArtifactError, match=match):
            Embedder(copy, options=RuntimeOptions(verify=verify))


@pytest.mark.parametrize("name", ["../outside.data", "/etc/hostname", "link.data"])
def test_manifest_paths_cannot_escape_the_artifact(external_artifact, tmp_path, name):
    copy = copy_of(external_artifact, tmp_path)
    (tmp_path / "outside.data").write_bytes(b"x")
    (copy / "link.data").symlink_to(tmp_path / "outside.data")

    def edit(manifest):
        manifest["files"][name] = {"bytes": 1, "sha256": "0" * 64}

    rewrite_manifest(copy, edit)
    with pytest.raises(ArtifactError, match="escapes|absolute|outside the artifact"):
        Artifact.open(copy, verify=False)


def test_cli_threshold_forces_external_data(trained_ckpt, tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        export_main(["--ckpt", str(trained_ckpt), "--out", str(out), "--external-data-threshold", "0"]) == 0
    )
    assert (out / "model.onnx.data").is_file()
    assert json.loads(capsys.readouterr().out)["min_cosine"]["fp32"] >= 0.9999
    assert (
        export_main(
            ["--ckpt", str(trained_ckpt), "--out", str(tmp_path / "x"), "--external-data-threshold", "-1"]
        )
        == 2
    )


def test_failed_gate_or_error_leaves_no_staging_folder(trained_ckpt, tmp_path, monkeypatch):
    import lame_export.pipeline as pipeline
    import lame_export.precision as precision

    assert issubclass(ExportGateError, GateError)
    out = tmp_path / "art"
    monkeypatch.setitem(pipeline.THRESHOLDS, "fp32", 1.5)  # unreachable: cosine <= 1
    with pytest.raises(GateError, match="fp32 parity"):
        export_checkpoint(trained_ckpt, out, ExportOptions(external_data_threshold=0))
    assert not out.exists() and not (tmp_path / ".art.tmp").exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def broken(*args, **kwargs):  # an error in the middle of a conversion
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(precision, "to_fp16", broken)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_checkpoint(trained_ckpt, out, ExportOptions(fp16=True))
    assert list(tmp_path.iterdir()) == []
