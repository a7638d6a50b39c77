"""The export artifact contract: ``lame_artifact.json`` and the files beside it.

Written by ``lame_export``, read here. Everything the runtime needs is in the directory:
ONNX graphs per precision, ``tokenizer.json``, ``preprocessor_config.json`` and this manifest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lame_runtime.errors import ArtifactError  # noqa: F401  (re-exported)
from lame_runtime.persist import sha256  # noqa: F401  (re-exported)

MANIFEST = "lame_artifact.json"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
DTYPES = {"int64": "int64", "float32": "float32"}


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[Any]  # ints for fixed dims, strings ("batch", "sequence") for dynamic ones


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "Artifact":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not path.is_dir():
            raise ArtifactError(f"artifact directory not found: {path}")
        if not manifest_path.is_file():
            raise ArtifactError(f"{path} is not a LaME export artifact: missing {MANIFEST}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{manifest_path} is not valid JSON: {err}") from err
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{manifest_path}: format_version {version!r} is not supported "
                                f"by this runtime (expects {FORMAT_VERSION})")
        return cls(path, manifest)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(**spec) for spec in self.manifest["inputs"]]

    @property
    def output_name(self) -> str:
        return self.manifest["outputs"][0]["name"]

    @property
    def dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.manifest["files"]]

    def file_for(self, precision: str, verify: bool = True) -> Path:
        files = self.manifest["files"]
        if precision not in files:
            raise ArtifactError(f"{self.path} has no {precision} model; it has "
                                f"{', '.join(self.precisions) or 'none'}")
        entry = files[precision]
        path = self.path / entry["path"]
        if not path.is_file():
            raise ArtifactError(f"{path} listed in {MANIFEST} is missing")
        if verify and sha256(path) != entry["sha256"]:
            raise ArtifactError(f"{path} does not match the sha256 in {MANIFEST}: the file is "
                                "corrupt or was replaced; re-export it")
        return path

    def instruction(self, kind: str) -> str | None:
        return self.manifest.get("instructions", {}).get(kind)


