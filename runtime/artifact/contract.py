"""The export artifact contract: ``lame_artifact.json`` and the files beside it.

Written by ``lame_export``, read here. Everything the runtime needs is in the directory: ONNX
graphs per precision (with their external-data ``.data`` files for big models),
``tokenizer.json``, ``preprocessor_config.json`` and this manifest.

Format 2 (format 1 artifacts are still read; they hashed their graphs only)::

    "models": {"fp32": {"path": "model.onnx", "external_data": ["model.onnx.data"],
                        "text": {"path": "model_text.onnx", "external_data": [...]}}, ...}
    "files":  {"model.onnx": {"bytes": N, "sha256": "..."}, "model.onnx.data": {...},
               "tokenizer.json": {...}, "preprocessor_config.json": {...}, ...}

``text`` (optional: older exports lack it) is the text-only graph of that precision: no vision
tower and no ``pixel_values`` input; the ``Embedder`` routes text-only rows to it.
``routed`` (optional) holds both in one graph (an ``If`` on ``image_mask``: a call without
image rows skips the vision tower), so one session keeps one pre-packed copy of the weights
(``lame_export.graphs.routed``); the ``Embedder`` serves it when present.
Every file of the artifact is listed in ``files`` and verified before use: the shared files at
``open``, a precision's graph and data files when that precision is first loaded. Hashes are
cached per file version (see ``artifact_files.HashCache``), so a 2 GB model is hashed once, not
on every load; ``verify=False`` skips hashing for devices that check at install time (paths and
sizes are still checked). The manifest's schema and checks live in
``lame_runtime.artifact.manifest``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lame_runtime.artifact.files import HASH_CACHE, HashCache, external_data_locations, member_path
from lame_runtime.artifact.manifest import (  # noqa: F401  (re-exported)
    DTYPES,
    FORMAT_VERSION,
    MANIFEST,
    OPTIONAL_FIELDS,
    PRECISIONS,
    PREPROCESSOR_FILE,
    READABLE_VERSIONS,
    REQUIRED_FIELDS,
    TOKENIZER_FILE,
    Manifest,
    TensorSpec,
    validate_manifest,
)
from lame_runtime.errors import ArtifactError  # noqa: F401  (re-exported)
from lame_runtime.persist import (
    read_json,
    recover_dir,
    sha256,  # noqa: F401  (re-exported)
)


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any] = field(repr=False)  # the validated JSON (spec.to_json())
    verify: bool = True
    spec: Manifest = field(default=None, repr=False)  # type: ignore[assignment]  # set by __post_init__
    _verified: set[str] = field(default_factory=set, repr=False)
    _absent: set[str] = field(default_factory=set, repr=False)  # optional files a bundle dropped

    def __post_init__(self) -> None:
        if self.spec is None:  # built from a dict (tests, tools): validate it into the typed form
            self.spec = Manifest.from_json(self.manifest, str(self.path / MANIFEST))

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Artifact:
        """Read, validate and check an artifact folder.

        Recovers the previous artifact after a kill between the two renames of a swap. Every
        listed file must exist inside the folder with its recorded size; with ``verify`` the
        shared files (tokenizer, preprocessor config, ...) are hashed now, the graphs when
        their precision is loaded (``file_for``).
        """
        requested = Path(path)
        found = recover_dir(requested)
        if found is None:
            raise ArtifactError(f"artifact directory not found: {requested}")
        manifest_path = found / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"{found} is not a LaME export artifact: missing {MANIFEST}")
        raw = read_json(manifest_path, ArtifactError, what="manifest")
        spec = Manifest.from_json(raw, str(manifest_path))
        artifact = cls(found, spec.to_json(), verify, spec)
        artifact._check_present()
        model_files = spec.graph_files()
        artifact._verify_files([n for n in artifact.manifest["files"] if n not in model_files])
        artifact._cross_check()
        return artifact

    # ------------------------------------------------------------------------ accessors
    @property
    def models(self) -> dict[str, dict[str, Any]]:
        models: dict[str, dict[str, Any]] = self.manifest["models"]
        return models

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.spec.inputs)

    @property
    def output_name(self) -> str:
        return self.spec.outputs[0].name

    @property
    def dim(self) -> int:
        return self.spec.embedding_dim

    @property
    def dimensions(self) -> tuple[int, ...]:
        """The embedding sizes this artifact serves: its full ``dim`` and, for a model trained
        with Matryoshka dimensions, each listed prefix size (manifest ``matryoshka_dims``)."""
        listed = self.manifest.get("matryoshka_dims") or ()
        return tuple(sorted({self.dim, *(int(d) for d in listed)}))

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.models]

    def instruction(self, kind: str) -> str | None:
        found = (self.spec.instructions or {}).get(kind)
        return found if isinstance(found, str) else None

    @functools.cached_property
    def instructions(self) -> dict[str, Any]:
        """The trained instructions per direction and task (lame_runtime.inputs.instructions),
        validated once (a service reads them on every request)."""
        from lame_runtime.inputs.instructions import check

        return check(self.manifest.get("instructions"), str(self.path))

    def has_text_graph(self, precision: str) -> bool:
        """Whether ``precision`` has a text-only graph (exports before it existed do not)."""
        return isinstance(self.models.get(precision, {}).get("text"), dict)

    def has_routed_graph(self, precision: str) -> bool:
        """Whether ``precision`` has the full and the text graph in one (``routed``)."""
        return isinstance(self.models.get(precision, {}).get("routed"), dict)

    def file_for(self, precision: str, verify: bool | None = None, graph: str = "full") -> Path:
        """The graph of ``precision``, with its external-data files checked (inside the folder,
        listed in the manifest) and, if ``verify`` (default: as opened), hash-verified.
        ``graph="text"``: its text-only graph (no vision tower, no ``pixel_values``);
        ``graph="routed"``: both in one graph."""
        if precision not in self.models:
            raise ArtifactError(
                f"{self.path} has no {precision} model; it has {', '.join(self.precisions) or 'none'}"
            )
        entry = self.models[precision]
        if graph == "text":
            if not self.has_text_graph(precision):
                raise ArtifactError(
                    f"{self.path} has no text-only {precision} graph (exported "
                    "before text graphs existed): the full graph serves text"
                )
            entry = entry["text"]
        elif graph == "routed":
            if not self.has_routed_graph(precision):
                raise ArtifactError(f"{self.path} has no routed {precision} graph")
            entry = entry["routed"]
        graph_path = self._member(entry["path"])
        for name in [entry["path"], *entry["external_data"]]:
            if not self._member(name).is_file():
                raise ArtifactError(f"{self.path / name}, listed in {MANIFEST}, is missing")
        if self.verify if verify is None else verify:
            self._verify_files([entry["path"], *entry["external_data"]])
        # Checked even without verify: ONNX Runtime would follow any location it is given.
        listed = set(entry["external_data"])
        for location in external_data_locations(graph_path):
            self._member(location, f"{entry['path']} external data")
            if location not in listed:
                raise ArtifactError(
                    f"{graph_path} refers to external data {location!r} that "
                    f"{MANIFEST} does not list for {precision}: refusing it"
                )
        return graph_path

    def verify_all(self) -> None:
        """Hash-check every listed file now (e.g. at install time)."""
        self._verify_files(list(self.manifest["files"]), force=True)

    # ------------------------------------------------------------------------ checks
    def _member(self, name: str, what: str = MANIFEST) -> Path:
        return member_path(self.path, name, f"{self.path / MANIFEST}: {what}")

    def _check_present(self) -> None:
        for name, entry in self.manifest["files"].items():
            path = self._member(name)
            if path.exists() and not path.is_file():
                raise ArtifactError(f"{path}, listed in {MANIFEST}, is not a regular file")
            if not path.is_file():
                if entry.get("required", True) is False:  # e.g. calib.npz, parity.json
                    self._absent.add(name)
                    continue
                raise ArtifactError(f"{path}, listed in {MANIFEST}, is missing")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise ArtifactError(
                    f"{path} has {size} bytes, {MANIFEST} records "
                    f"{entry['bytes']}: the file is truncated or was replaced; "
                    "re-export or re-copy the artifact"
                )

    def _verify_files(self, names: list[str], force: bool = False) -> None:
        if not (self.verify or force):
            return
        todo = [n for n in names if n not in self._absent and (force or n not in self._verified)]
        if not todo:
            return
        cache = HashCache(self.path)
        try:
            for name in todo:
                if cache.digest(name) != self.manifest["files"][name]["sha256"]:
                    raise ArtifactError(
                        f"{self.path / name} does not match the sha256 in "
                        f"{MANIFEST}: the file is corrupt or was replaced; "
                        "re-export or re-copy the artifact"
                    )
                self._verified.add(name)
        finally:
            cache.save()

    def _cross_check(self) -> None:
        """tokenizer.json and preprocessor_config.json must be the ones exported with the
        graphs: a swapped file would give wrong vectors without any other error."""
        config_path = self._member(PREPROCESSOR_FILE)
        token_path = self._member(TOKENIZER_FILE)
        for path in (config_path, token_path):
            if not path.is_file():
                raise ArtifactError(f"{path} is missing from the artifact")
        config = _read_json(config_path)
        if config.get("image") != self.manifest["image"]:
            raise ArtifactError(
                f"{config_path}: image config {config.get('image')} differs "
                f"from the manifest's {self.manifest['image']}: the file "
                "belongs to another model"
            )
        if config.get("max_text_tokens", 48) != self.manifest["max_text_tokens"]:
            raise ArtifactError(
                f"{config_path}: max_text_tokens differs from the manifest's "
                f"{self.manifest['max_text_tokens']}"
            )
        vocabulary = _token_ids(_read_json(token_path))
        from lame_runtime.inputs.text import SPECIAL_TOKENS

        for role, token_id in self.manifest["special_tokens"].items():
            token = SPECIAL_TOKENS.get(role)
            if token is not None and vocabulary.get(token) != token_id:
                raise ArtifactError(
                    f"{token_path}: special token {token} has id "
                    f"{vocabulary.get(token)}, the graphs were exported with "
                    f"{token_id}: the tokenizer belongs to another model"
                )


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = read_json(path, ArtifactError, dict)
    return data


def _token_ids(tokenizer: dict[str, Any]) -> dict[str, int]:
    """token string -> id from a tokenizers ``tokenizer.json`` (added tokens win)."""
    vocab = (tokenizer.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel
        ids = dict(vocab)
    elif isinstance(vocab, list):  # Unigram: [token, score] pairs, id = position
        ids = {pair[0]: i for i, pair in enumerate(vocab) if isinstance(pair, list) and pair}
    else:
        ids = {}
    for added in tokenizer.get("added_tokens") or []:
        if isinstance(added, dict) and "content" in added:
            ids[added["content"]] = added.get("id")
    return ids


__all__ = [
    "Artifact",
    "ArtifactError",
    "TensorSpec",
    "MANIFEST",
    "FORMAT_VERSION",
    "PRECISIONS",
    "HASH_CACHE",
    "validate_manifest",
    "sha256",
]
