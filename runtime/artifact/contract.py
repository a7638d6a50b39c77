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
Every file of the artifact is listed in ``files`` and verified before use: the shared files at
``open``, a precision's graph and data files when that precision is first loaded. Hashes are
cached per file version (see ``artifact_files.HashCache``), so a 2 GB model is hashed once, not
on every load; ``verify=False`` skips hashing for devices that check at install time (paths and
sizes are still checked). To extend the manifest, add a field to ``REQUIRED_FIELDS`` or
``OPTIONAL_FIELDS`` and, if it has structure, a checker to ``_CHECKERS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lame_runtime.artifact.files import HASH_CACHE, HashCache, external_data_locations, member_path
from lame_runtime.errors import ArtifactError  # noqa: F401  (re-exported)
from lame_runtime.persist import (
    read_json,
    recover_dir,
    sha256,  # noqa: F401  (re-exported)
)

MANIFEST = "lame_artifact.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PRECISIONS = ("fp32", "fp16", "int8", "int4")  # int4: weight-only (MatMulNBits), ORT CPU/CUDA
DTYPES = {"int64": "int64", "float32": "float32"}
TOKENIZER_FILE = "tokenizer.json"  # same names as lame_runtime.inputs.preprocess (no import
PREPROCESSOR_FILE = "preprocessor_config.json"  # cycle: preprocess does not need us)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# field -> accepted JSON type(s); a missing or wrong-typed one is an ArtifactError naming it.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "embedding_dim": int,
    "inputs": list,
    "outputs": list,
    "image": dict,
    "num_image_tokens": int,
    "max_text_tokens": int,
    "special_tokens": dict,
    "models": dict,
    "files": dict,
}
OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "num_reason_tokens": int,
    "num_summary_tokens": int,
    "instructions": dict,
    "opset": int,
    "engines": dict,
    "max_batch": int,  # the exported graph's dynamic-axis bounds (TensorRT profiles)
    "max_sequence": int,
    # Matryoshka-trained prefixes: the leading N components, renormalised, embed on their own.
    # Absent (every export so far): only the full embedding_dim is offered (lame-serve's
    # `dimensions` is refused otherwise).
    "matryoshka_dims": list,
}


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[Any]  # ints for fixed dims, strings ("batch", "sequence") for dynamic ones


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "integer", str: "string", list: "list", dict: "object", float: "number", bool: "boolean"}.get(
            k, k.__name__
        )
        for k in kinds
    )


def _is(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON true is not an integer here
    return isinstance(value, kinds)


def _require(where: str, mapping: dict, key: str, kind) -> Any:
    if key not in mapping:
        raise ArtifactError(f"{where}: missing field {key!r}")
    if not _is(mapping[key], kind):
        name = _type_name(kind)
        article = "an" if name[0] in "aeiou" else "a"
        raise ArtifactError(
            f"{where}: field {key!r} must be {article} {name}, got "
            f"{type(mapping[key]).__name__} {mapping[key]!r:.60}"
        )
    return mapping[key]


def _check_tensors(where: str, manifest: dict) -> None:
    for key in ("inputs", "outputs"):
        if not manifest[key]:
            raise ArtifactError(f"{where}: {key!r} is empty")
        for i, spec in enumerate(manifest[key]):
            item = f"{where}: {key}[{i}]"
            if not isinstance(spec, dict):
                raise ArtifactError(f"{item} must be an object")
            _require(item, spec, "name", str)
            dtype = _require(item, spec, "dtype", str)
            if key == "inputs" and dtype not in DTYPES:
                raise ArtifactError(f"{item}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
            _require(item, spec, "shape", list)
            if set(spec) - {"name", "dtype", "shape"}:
                raise ArtifactError(f"{item}: unknown keys {sorted(set(spec) - {'name', 'dtype', 'shape'})}")


def _check_files(where: str, manifest: dict) -> None:
    for name, entry in manifest["files"].items():
        item = f"{where}: files[{name!r}]"
        if not isinstance(entry, dict):
            raise ArtifactError(f"{item} must be an object with 'bytes' and 'sha256'")
        size = _require(item, entry, "bytes", int)
        digest = _require(item, entry, "sha256", str)
        if size < 0 or not _SHA256.match(digest):
            raise ArtifactError(f"{item}: 'bytes' must be >= 0 and 'sha256' 64 hex digits")
        if "required" in entry:
            _require(item, entry, "required", bool)


def _check_models(where: str, manifest: dict) -> None:
    models, files = manifest["models"], manifest["files"]
    if not models:
        raise ArtifactError(f"{where}: 'models' is empty: the artifact has no graph")
    for precision, entry in models.items():
        item = f"{where}: models[{precision!r}]"
        if not isinstance(entry, dict):
            raise ArtifactError(f"{item} must be an object")
        if precision not in PRECISIONS:
            raise ArtifactError(f"{item}: unknown precision (expected one of {PRECISIONS})")
        _check_graph_entry(item, entry, files)
        if "text" in entry:  # the text-only graph (no vision tower); optional, newer exports
            if not isinstance(entry["text"], dict):
                raise ArtifactError(f"{item}['text'] must be an object")
            _check_graph_entry(f"{item}['text']", entry["text"], files)


def _check_graph_entry(item: str, entry: dict, files: dict) -> None:
    names = [_require(item, entry, "path", str)]
    data = _require(item, entry, "external_data", list)
    if not all(isinstance(n, str) for n in data):
        raise ArtifactError(f"{item}: 'external_data' must list file names")
    for name in names + data:
        if name not in files:
            raise ArtifactError(f"{item}: {name!r} is not listed (with its sha256) in 'files'")
        if files[name].get("required") is False:
            raise ArtifactError(f"{item}: {name!r} is a graph file and cannot be optional")


def _check_special_tokens(where: str, manifest: dict) -> None:
    for role, token_id in manifest["special_tokens"].items():
        if not _is(token_id, int) or token_id < 0:
            raise ArtifactError(f"{where}: special_tokens[{role!r}] must be a token id >= 0")


def _check_engines(where: str, manifest: dict) -> None:
    # The "engines" section (TensorRT plans) belongs to lame_runtime.engines.tensorrt.meta (area trt).
    from lame_runtime.engines.tensorrt.meta import validate_engines_section

    try:
        validate_engines_section(manifest)
    except ArtifactError as err:
        raise ArtifactError(f"{where}: {err}") from err


# Structured checks run after the type table; add one per new structured section.
def _check_matryoshka(where: str, manifest: dict) -> None:
    dims = manifest.get("matryoshka_dims")
    if dims is None:
        return
    full = manifest["embedding_dim"]
    if not all(_is(d, int) and 1 <= d <= full for d in dims) or len(set(dims)) != len(dims):
        raise ArtifactError(
            f"{where}: matryoshka_dims must be distinct integers in [1, embedding_dim={full}], got {dims!r}"
        )


_CHECKERS: list[Callable[[str, dict], None]] = [
    _check_tensors,
    _check_files,
    _check_models,
    _check_special_tokens,
    _check_engines,
    _check_matryoshka,
]


def _upgrade_v1(manifest: dict) -> dict:
    """Format 1 listed graphs only, keyed by precision; read it as format 2 (no data files,
    tokenizer and preprocessor config unhashed: nothing else to check for them)."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        return manifest  # validation names the problem
    upgraded = dict(manifest, models={}, files={})
    for precision, entry in files.items():
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            upgraded["models"][precision] = {"path": entry["path"], "external_data": []}
            upgraded["files"][entry["path"]] = {k: entry.get(k) for k in ("bytes", "sha256")}
        else:
            upgraded["models"][precision] = entry
    return upgraded


def validate_manifest(manifest: Any, where: str = MANIFEST) -> dict:
    """The manifest, upgraded to the current format, or an ArtifactError naming the problem."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where} must hold a JSON object, got {type(manifest).__name__}")
    version = _require(where, manifest, "format_version", int)
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: format_version {version} was written by a newer "
            f"lame-export; this runtime reads formats {READABLE_VERSIONS}: "
            "upgrade lame-embed"
        )
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{where}: format_version {version} is not supported (this "
            f"runtime reads {READABLE_VERSIONS}); re-export the checkpoint"
        )
    if version == 1:
        manifest = _upgrade_v1(manifest)
    for key, kind in REQUIRED_FIELDS.items():
        _require(where, manifest, key, kind)
    for key, kind in OPTIONAL_FIELDS.items():
        if key in manifest:
            _require(where, manifest, key, kind)
    for check in _CHECKERS:
        check(where, manifest)
    return manifest


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any] = field(repr=False)
    verify: bool = True
    _verified: set = field(default_factory=set, repr=False)
    _absent: set = field(default_factory=set, repr=False)  # optional files a bundle dropped

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
        artifact = cls(found, validate_manifest(raw, str(manifest_path)), verify)
        artifact._check_present()
        model_files = {
            n
            for m in artifact.models.values()
            for g in [m, m.get("text") or m]
            for n in [g["path"], *g["external_data"]]
        }
        artifact._verify_files([n for n in artifact.manifest["files"] if n not in model_files])
        artifact._cross_check()
        return artifact

    # ------------------------------------------------------------------------ accessors
    @property
    def models(self) -> dict[str, dict]:
        return self.manifest["models"]

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
    def dimensions(self) -> tuple[int, ...]:
        """The embedding sizes this artifact serves: its full ``dim`` and, for a model trained
        with Matryoshka dimensions, each listed prefix size (manifest ``matryoshka_dims``)."""
        listed = self.manifest.get("matryoshka_dims") or ()
        return tuple(sorted({self.dim, *(int(d) for d in listed)}))

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.models]

    def instruction(self, kind: str) -> str | None:
        return self.manifest.get("instructions", {}).get(kind)

    @property
    def instructions(self) -> dict[str, Any]:
        """The trained instructions per direction and task (lame_runtime.inputs.instructions)."""
        from lame_runtime.inputs.instructions import check

        return check(self.manifest.get("instructions"), str(self.path))

    def has_text_graph(self, precision: str) -> bool:
        """Whether ``precision`` has a text-only graph (exports before it existed do not)."""
        return isinstance(self.models.get(precision, {}).get("text"), dict)

    def file_for(self, precision: str, verify: bool | None = None, graph: str = "full") -> Path:
        """The graph of ``precision``, with its external-data files checked (inside the folder,
        listed in the manifest) and, if ``verify`` (default: as opened), hash-verified.
        ``graph="text"``: its text-only graph (no vision tower, no ``pixel_values``)."""
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
        graph = self._member(entry["path"])
        for name in [entry["path"], *entry["external_data"]]:
            if not self._member(name).is_file():
                raise ArtifactError(f"{self.path / name}, listed in {MANIFEST}, is missing")
        if self.verify if verify is None else verify:
            self._verify_files([entry["path"], *entry["external_data"]])
        # Checked even without verify: ONNX Runtime would follow any location it is given.
        listed = set(entry["external_data"])
        for location in external_data_locations(graph):
            self._member(location, f"{entry['path']} external data")
            if location not in listed:
                raise ArtifactError(
                    f"{graph} refers to external data {location!r} that "
                    f"{MANIFEST} does not list for {precision}: refusing it"
                )
        return graph

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


def _read_json(path: Path) -> dict:
    return read_json(path, ArtifactError, dict)


def _token_ids(tokenizer: dict) -> dict[str, int]:
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
