"""The typed manifest (lame_runtime.artifact.manifest.Manifest): validated from JSON with errors
naming the field, and written back as the same JSON (key order included), so the exporter, the
TensorRT builder and the runtime share one form without changing what is on disk."""

from __future__ import annotations

import copy
import json

import pytest
from runtime_fixtures import runtime_artifact  # noqa: F401

from lame_runtime.artifact.contract import MANIFEST, Artifact
from lame_runtime.artifact.manifest import FileRecord, GraphFiles, Manifest
from lame_runtime.errors import ArtifactError

pytestmark = pytest.mark.runtime


@pytest.fixture
def raw(runtime_artifact):
    return json.loads((runtime_artifact / MANIFEST).read_text())


def test_round_trip_is_the_same_json_text(raw):
    manifest = Manifest.from_json(copy.deepcopy(raw))
    assert json.dumps(manifest.to_json()) == json.dumps(raw)  # same keys, values and order
    assert isinstance(manifest.models["fp32"], GraphFiles)
    assert isinstance(next(iter(manifest.files.values())), FileRecord)
    assert manifest.inputs[0].name == "input_ids" and manifest.embedding_dim == raw["embedding_dim"]


def test_the_artifact_exposes_the_typed_form(runtime_artifact, raw):
    artifact = Artifact.open(runtime_artifact, verify=False)
    assert artifact.spec.to_json() == artifact.manifest == raw
    assert artifact.output_name == raw["outputs"][0]["name"]


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: m.pop("embedding_dim"), "embedding_dim"),
        (lambda m: m.update(special_tokens=[1, 2]), "special_tokens"),
        (lambda m: m["inputs"][0].update(dtype="int8"), "inputs[0]"),
        (lambda m: m["models"]["fp32"].update(external_data="x.data"), "external_data"),
        (lambda m: m["files"][next(iter(m["files"]))].update(sha256="nope"), "files["),
        (lambda m: m.update(max_batch="64"), "max_batch"),
        (lambda m: m.update(graph=7), "graph"),
        (lambda m: m.update(engines={"fp32": {}}), "engines"),
    ],
)
def test_from_json_names_the_bad_field(raw, edit, field):
    edit(raw)
    with pytest.raises(ArtifactError, match=field.replace("[", r"\[")):
        Manifest.from_json(raw, "somewhere/lame_artifact.json")


def test_unknown_keys_are_kept_and_engines_go_last(raw):
    raw["written_by_a_later_tool"] = {"x": 1}
    manifest = Manifest.from_json(raw)
    assert manifest.extra == {"written_by_a_later_tool": {"x": 1}}
    assert manifest.to_json()["written_by_a_later_tool"] == {"x": 1}
    manifest.engines = {}
    assert list(manifest.to_json())[-2:] == ["engines", "written_by_a_later_tool"]


def test_format_1_is_read_as_format_2(raw):
    old = {k: v for k, v in raw.items() if k not in ("models", "files")}
    old["format_version"] = 1
    old["files"] = {"fp32": {"path": "model.onnx", "bytes": 5, "sha256": "a" * 64}}
    manifest = Manifest.from_json(old)
    assert manifest.models == {"fp32": GraphFiles("model.onnx", [])}
    assert manifest.files == {"model.onnx": FileRecord(5, "a" * 64, None)}
