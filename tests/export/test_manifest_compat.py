"""The manifest on disk did not change when it became typed: a fresh export of the tiny
checkpoint writes the same JSON (keys, values, key order) as the exporter before
``lame_runtime.artifact.manifest`` (data/manifest_tiny_v2.json, with sizes, hashes, the
checkpoint's path and the tool versions masked), and an artifact with that older manifest
loads and serves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from lame_runtime import Embedder
from lame_runtime.artifact.contract import MANIFEST

GOLDEN = Path(__file__).parent / "data" / "manifest_tiny_v2.json"


def _masked(manifest: dict) -> dict:
    manifest = json.loads(json.dumps(manifest))
    for entry in manifest["files"].values():
        entry["bytes"], entry["sha256"] = "<bytes>", "<sha256>"
    manifest["source_checkpoint"] = {k: f"<{k}>" for k in manifest["source_checkpoint"]}
    manifest["exported_with"] = {k: "<version>" for k in manifest["exported_with"]}
    return manifest


def test_fresh_export_writes_the_manifest_the_old_exporter_wrote(artifact_dir):
    fresh = json.loads((artifact_dir / MANIFEST).read_text())
    golden = json.loads(GOLDEN.read_text())
    assert json.dumps(_masked(fresh), indent=1) == json.dumps(golden, indent=1)


def test_an_artifact_with_the_old_manifest_loads(artifact_dir, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(artifact_dir, copy)
    fresh = json.loads((copy / MANIFEST).read_text())
    old = json.loads(GOLDEN.read_text())
    # The old exporter's manifest, with this copy's own sizes, hashes and provenance.
    old["files"], old["source_checkpoint"] = fresh["files"], fresh["source_checkpoint"]
    old["exported_with"] = fresh["exported_with"]
    (copy / MANIFEST).write_text(json.dumps(old, indent=2))
    (copy / ".lame_hashes.json").unlink(missing_ok=True)
    vectors = Embedder(copy).encode(["the digits add up to 9"], [np.zeros((16, 64, 3), np.uint8)])
    reference = Embedder(artifact_dir).encode(["the digits add up to 9"], [np.zeros((16, 64, 3), np.uint8)])
    np.testing.assert_allclose(vectors, reference, atol=1e-6)
