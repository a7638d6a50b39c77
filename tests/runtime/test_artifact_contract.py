"""The artifact contract as the runtime reads it: validation, integrity, hash cache, recovery."""

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from lame_runtime import Embedder, RuntimeOptions
from lame_runtime.artifact.contract import (
    FORMAT_VERSION,
    HASH_CACHE,
    MANIFEST,
    REQUIRED_FIELDS,
    Artifact,
    validate_manifest,
)
from lame_runtime.artifact.files import HashCache
from lame_runtime.errors import ArtifactError
from lame_runtime.persist import sha256, staging_paths


@pytest.fixture
def copy(artifact_dir, tmp_path) -> Path:
    folder = tmp_path / "art"
    shutil.copytree(artifact_dir, folder)
    return folder


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest))


def relist(folder: Path, name: str) -> None:
    manifest = manifest_of(folder)
    manifest["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
    write_manifest(folder, manifest)


@pytest.mark.parametrize("field", sorted(REQUIRED_FIELDS))
def test_missing_field_is_named(copy, field):
    manifest = manifest_of(copy)
    del manifest[field]
    write_manifest(copy, manifest)
    with pytest.raises(ArtifactError, match=f"missing field '{field}'"):
        Artifact.open(copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(embedding_dim="32"), "'embedding_dim' must be an integer, got str"),
        (lambda m: m.update(inputs={}), "'inputs' must be a list"),
        (lambda m: m.update(embedding_dim=True), "'embedding_dim' must be an integer, got bool"),
        (lambda m: m["inputs"][0].pop("dtype"), r"inputs\[0\]: missing field 'dtype'"),
        (lambda m: m["inputs"][1].update(dtype="int7"), "dtype 'int7' is not one of"),
        (
            lambda m: m["files"]["tokenizer.json"].pop("sha256"),
            r"files\['tokenizer.json'\]: missing field 'sha256'",
        ),
        (lambda m: m["files"]["tokenizer.json"].update(sha256="abc"), "64 hex digits"),
        (lambda m: m["models"]["fp16"].update(external_data="x.data"), "'external_data' must be a list"),
        (lambda m: m["models"].update(bf16={"path": "m.onnx", "external_data": []}), "unknown precision"),
        (lambda m: m["files"].pop("model_int8.onnx"), "'model_int8.onnx' is not listed"),
        (lambda m: m["special_tokens"].update(embed=-1), r"special_tokens\['embed'\]"),
        (lambda m: m.update(instructions=["q"]), "'instructions' must be an object"),
    ],
)
def test_wrong_field_is_named(copy, edit, message):
    manifest = manifest_of(copy)
    edit(manifest)
    write_manifest(copy, manifest)
    with pytest.raises(ArtifactError, match=message):
        Embedder(copy)


def test_manifest_not_an_object_or_not_json(copy):
    (copy / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="must hold a JSON object, got list"):
        Artifact.open(copy)
    (copy / MANIFEST).write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Artifact.open(copy)


def test_newer_and_unknown_format_versions(copy):
    manifest = manifest_of(copy)
    assert manifest["format_version"] == FORMAT_VERSION == 2
    write_manifest(copy, {**manifest, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(ArtifactError, match="written by a newer lame-export.*upgrade lame-embed"):
        Embedder(copy)
    write_manifest(copy, {**manifest, "format_version": 0})
    with pytest.raises(ArtifactError, match="re-export"):
        Embedder(copy)
    write_manifest(copy, {**manifest, "format_version": "2"})
    with pytest.raises(ArtifactError, match="'format_version' must be an integer"):
        Embedder(copy)


def test_version_1_artifacts_still_load(copy, artifact_dir):
    manifest = manifest_of(copy)
    old = {k: v for k, v in manifest.items() if k not in ("models", "files")}
    old["format_version"] = 1
    old["files"] = {
        p: {
            "path": e["path"],
            "precision": p,
            "bytes": manifest["files"][e["path"]]["bytes"],
            "sha256": manifest["files"][e["path"]]["sha256"],
        }
        for p, e in manifest["models"].items()
    }
    write_manifest(copy, old)
    texts = ["the digits add up to 9"]
    assert np.array_equal(Embedder(copy).encode(texts), Embedder(artifact_dir).encode(texts))
    assert Artifact.open(copy).precisions == ["fp32", "fp16", "int8"]


def test_tampered_tokenizer_or_config_is_refused(copy):
    edits = {
        "tokenizer.json": (b"[UNK]", b"[UNX]"),  # same size: only the hash can tell
        "preprocessor_config.json": (b"max_text_tokens", b"max_text_tokenz"),
    }
    for name, (old, new) in edits.items():
        original = (copy / name).read_bytes()
        assert old in original
        (copy / name).write_bytes(original.replace(old, new, 1))
        with pytest.raises(ArtifactError, match=f"{name} does not match the sha256"):
            Embedder(copy)
        (copy / name).write_bytes(original + b" ")
        with pytest.raises(ArtifactError, match=f"{name} has {len(original) + 1} bytes"):
            Embedder(copy)
        (copy / name).write_bytes(original)
    Embedder(copy)


def test_swapped_tokenizer_is_refused_even_with_a_matching_hash(copy):
    """A tokenizer from another model, listed with its own hash: the special-token ids differ."""
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    for token in tokenizer["added_tokens"]:  # swap [IMG] and [EMBED]
        if token["content"] in ("[IMG]", "[EMBED]"):
            token["id"] = ids["[EMBED]" if token["content"] == "[IMG]" else "[IMG]"]
    vocab = tokenizer["model"]["vocab"]
    vocab["[IMG]"], vocab["[EMBED]"] = vocab["[EMBED]"], vocab["[IMG]"]
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    relist(copy, "tokenizer.json")
    with pytest.raises(ArtifactError, match=r"special token \[(IMG|EMBED)\] has id .* another model"):
        Embedder(copy)
    with pytest.raises(ArtifactError, match="another model"):
        Embedder(copy, options=RuntimeOptions(verify=False))


def test_swapped_preprocessor_config_is_refused(copy):
    config = json.loads((copy / "preprocessor_config.json").read_text())
    config["image"]["height"] *= 2
    (copy / "preprocessor_config.json").write_text(json.dumps(config))
    relist(copy, "preprocessor_config.json")
    with pytest.raises(ArtifactError, match="image config .* differs from the manifest"):
        Embedder(copy)


def test_optional_files_may_be_dropped_but_not_tampered(copy):
    (copy / "calib.npz").unlink()
    Embedder(copy)
    (copy / "parity.json").write_text("{}")
    with pytest.raises(ArtifactError, match="parity.json has 2 bytes"):
        Embedder(copy)


def test_hash_cache_is_used_and_stale_entries_are_rehashed(copy):
    (copy / HASH_CACHE).unlink(missing_ok=True)
    before = HashCache.hashed
    Embedder(copy)  # hashes the shared files and the fp32 graph, then caches them
    first = HashCache.hashed - before
    assert first >= 3 and (copy / HASH_CACHE).is_file()
    cache = json.loads((copy / HASH_CACHE).read_text())["files"]
    assert cache["model.onnx"]["sha256"] == manifest_of(copy)["files"]["model.onnx"]["sha256"]
    Embedder(copy)
    Embedder(copy, precision="fp32")
    assert HashCache.hashed - before == first  # nothing re-hashed
    # A replaced file (new content, same size, new mtime) is re-hashed and refused.
    graph = copy / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    stat = graph.stat()
    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(ArtifactError, match=r"model\.onnx does not match the sha256"):
        Embedder(copy)
    assert HashCache.hashed - before == first + 1


def test_a_corrupt_hash_cache_is_ignored(copy):
    (copy / HASH_CACHE).write_text("not json")
    Embedder(copy)
    assert json.loads((copy / HASH_CACHE).read_text())["files"]


def test_kill_between_the_two_renames_is_recovered(copy):
    """atomic_write_dir renames NAME -> .NAME.old, then .NAME.tmp -> NAME; killed in between,
    only .NAME.old is left: Artifact.open brings it back."""
    _, old = staging_paths(copy)
    copy.rename(old)
    with pytest.warns(RuntimeWarning, match="restored the previous complete version"):
        artifact = Artifact.open(copy)
    assert artifact.path == copy and copy.is_dir() and not old.exists()
    assert Embedder(copy).encode(["x"]).shape == (1, artifact.dim)


KILLED_WRITER = """
import shutil, sys
from pathlib import Path
from lame_runtime.persist import atomic_write_dir
src, final = Path(sys.argv[1]), Path(sys.argv[2])
def write(stage):
    for path in sorted(src.iterdir()):
        if path.name != "lame_artifact.json":
            shutil.copy2(path, stage / path.name)
    shutil.copy2(src / "lame_artifact.json", stage / "lame_artifact.json")
print("ready", flush=True)
while True:
    atomic_write_dir(final, write, marker="lame_artifact.json")
"""


def test_artifact_swap_survives_sigkill(copy, tmp_path):
    """A real writer re-swapping the artifact, killed at random instants: the last complete
    version always opens and verifies."""
    final = tmp_path / "served"
    shutil.copytree(copy, final)
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(copy), str(final)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 0.4)))
        writer.kill()
        writer.wait()
        writer.stdout.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "restored the previous version"
            artifact = Artifact.open(final)
        artifact.verify_all()
        assert artifact.file_for("fp32").is_file()


def test_validate_manifest_is_importable_for_other_writers(artifact_dir):
    manifest = validate_manifest(manifest_of(artifact_dir))
    assert set(manifest["models"]) == {"fp32", "fp16", "int8"}
