"""The manifest (``lame_artifact.json``): its fields, their JSON types and structured checks.

One home for the manifest's schema, shared by the writer (``lame_export``), the TensorRT
builder (``lame_runtime.engines.tensorrt.build``) and the reader (``lame_runtime.artifact.contract``).
To extend the manifest, add a field to ``REQUIRED_FIELDS`` or ``OPTIONAL_FIELDS`` and, if it
has structure, a checker to ``_CHECKERS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from lame_runtime.artifact.bounds import DEFAULT_MAX_BATCH, DEFAULT_MAX_SEQUENCE, MIN_SEQUENCE  # noqa: F401  (re-exported)
from lame_runtime.errors import ArtifactError

JsonObject = dict[str, Any]
Kind = type | tuple[type, ...]  # the JSON type(s) a field accepts

MANIFEST = "lame_artifact.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PRECISIONS = ("fp32", "fp16", "int8", "int4")  # int4: weight-only (MatMulNBits), ORT CPU/CUDA
DTYPES = {"int64": "int64", "float32": "float32"}
TOKENIZER_FILE = "tokenizer.json"  # beside the manifest; preprocessing reads them from here
PREPROCESSOR_FILE = "preprocessor_config.json"
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
    # Native-resolution graphs: the longest slice of patches (one image or video step) accepted.
    "max_patches": int,
    # Matryoshka-trained prefixes: the leading N components, renormalised, embed on their own.
    # Absent (every export so far): only the full embedding_dim is offered (lame-serve's
    # `dimensions` is refused otherwise).
    "matryoshka_dims": list,
    # Provenance, for people: a description of the graphs, the checkpoint, the tool versions.
    "graph": str,
    "source_checkpoint": dict,
    "exported_with": dict,
}


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[Any]  # ints for fixed dims, strings ("batch", "sequence") for dynamic ones

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def _type_name(kind: Kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "integer", str: "string", list: "list", dict: "object", float: "number", bool: "boolean"}.get(
            k, k.__name__
        )
        for k in kinds
    )


def _is(value: Any, kind: Kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # JSON true is not an integer here
    return isinstance(value, kinds)


def _require(where: str, mapping: JsonObject, key: str, kind: Kind) -> Any:
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


def _check_tensors(where: str, manifest: JsonObject) -> None:
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


def _check_files(where: str, manifest: JsonObject) -> None:
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


def _check_models(where: str, manifest: JsonObject) -> None:
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
        if "routed" in entry:  # full + text graph in one (an If on image_mask); optional
            if not isinstance(entry["routed"], dict):
                raise ArtifactError(f"{item}['routed'] must be an object")
            _check_graph_entry(f"{item}['routed']", entry["routed"], files)


def _check_graph_entry(item: str, entry: JsonObject, files: JsonObject) -> None:
    names = [_require(item, entry, "path", str)]
    data = _require(item, entry, "external_data", list)
    if not all(isinstance(n, str) for n in data):
        raise ArtifactError(f"{item}: 'external_data' must list file names")
    for name in names + data:
        if name not in files:
            raise ArtifactError(f"{item}: {name!r} is not listed (with its sha256) in 'files'")
        if files[name].get("required") is False:
            raise ArtifactError(f"{item}: {name!r} is a graph file and cannot be optional")


def _check_special_tokens(where: str, manifest: JsonObject) -> None:
    for role, token_id in manifest["special_tokens"].items():
        if not _is(token_id, int) or token_id < 0:
            raise ArtifactError(f"{where}: special_tokens[{role!r}] must be a token id >= 0")


def _check_engines(where: str, manifest: JsonObject) -> None:
    # The "engines" section (TensorRT plans) belongs to lame_runtime.engines.tensorrt.meta.
    from lame_runtime.engines.tensorrt.meta import validate_engines_section

    try:
        validate_engines_section(manifest)
    except ArtifactError as err:
        raise ArtifactError(f"{where}: {err}") from err


# Structured checks run after the type table; add one per new structured section.
def _check_matryoshka(where: str, manifest: JsonObject) -> None:
    dims = manifest.get("matryoshka_dims")
    if dims is None:
        return
    full = manifest["embedding_dim"]
    if not all(_is(d, int) and 1 <= d <= full for d in dims) or len(set(dims)) != len(dims):
        raise ArtifactError(
            f"{where}: matryoshka_dims must be distinct integers in [1, embedding_dim={full}], got {dims!r}"
        )


_CHECKERS: list[Callable[[str, JsonObject], None]] = [
    _check_tensors,
    _check_files,
    _check_models,
    _check_special_tokens,
    _check_engines,
    _check_matryoshka,
]


def _upgrade_v1(manifest: JsonObject) -> JsonObject:
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


def validate_manifest(manifest: Any, where: str = MANIFEST) -> dict[str, Any]:
    """The manifest, upgraded to the current format, or an ArtifactError naming the problem."""
    return Manifest.from_json(manifest, where).to_json()


def _validated(manifest: Any, where: str) -> dict[str, Any]:
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
    return dict(manifest)


# ------------------------------------------------------------------------------ typed form
@dataclass
class GraphFiles:
    """One ONNX graph of a precision: its file and the external-data files it refers to."""

    path: str
    external_data: list[str] = field(default_factory=list)
    text: GraphFiles | None = None  # the text-only graph of the same precision, if exported
    routed: GraphFiles | None = None  # both in one graph (lame_export.graphs.routed), if exported

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GraphFiles:
        text, routed = data.get("text"), data.get("routed")
        return cls(
            data["path"],
            list(data["external_data"]),
            cls.from_json(text) if text else None,
            cls.from_json(routed) if routed else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "external_data": list(self.external_data)}
        if self.text is not None:
            out["text"] = self.text.to_json()
        if self.routed is not None:
            out["routed"] = self.routed.to_json()
        return out


@dataclass
class FileRecord:
    """A file of the artifact: its size and sha256; ``required=False``: a deployment may drop it."""

    bytes: int
    sha256: str
    required: bool | None = None  # None: not recorded (required)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bytes": self.bytes, "sha256": self.sha256}
        if self.required is not None:
            out["required"] = self.required
        return out


# The JSON key order lame-export has always written (engines: added by build-engine).
_ORDER = (
    "format_version",
    "embedding_dim",
    "num_reason_tokens",
    "num_summary_tokens",
    "matryoshka_dims",
    "inputs",
    "outputs",
    "graph",
    "image",
    "num_image_tokens",
    "max_text_tokens",
    "special_tokens",
    "instructions",
    "opset",
    "max_batch",
    "max_sequence",
    "max_patches",
    "models",
    "files",
    "source_checkpoint",
    "exported_with",
    "engines",
)


@dataclass
class Manifest:
    """``lame_artifact.json`` as typed fields; the one form the exporter writes, the TensorRT
    builder edits and the runtime reads. ``from_json`` validates (an ``ArtifactError`` names
    the field); ``to_json`` gives back the same JSON, key order included."""

    embedding_dim: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    image: dict[str, Any]
    num_image_tokens: int
    max_text_tokens: int
    special_tokens: dict[str, int]
    models: dict[str, GraphFiles]
    files: dict[str, FileRecord]
    format_version: int = FORMAT_VERSION
    num_reason_tokens: int | None = None
    num_summary_tokens: int | None = None
    matryoshka_dims: list[int] | None = None
    graph: str | None = None
    instructions: dict[str, Any] | None = None
    opset: int | None = None
    max_batch: int | None = None  # the exported graph's dynamic-axis bounds
    max_sequence: int | None = None
    max_patches: int | None = None  # native resolution only
    source_checkpoint: dict[str, Any] | None = None
    exported_with: dict[str, Any] | None = None
    engines: dict[str, dict[str, Any]] | None = None  # lame_runtime.engines.tensorrt.meta
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Validate ``data`` (a parsed manifest; format 1 is upgraded) -> ``Manifest``."""
        raw = _validated(data, where)
        known = set(_ORDER)
        return cls(
            format_version=raw["format_version"],
            embedding_dim=raw["embedding_dim"],
            inputs=[TensorSpec(**spec) for spec in raw["inputs"]],
            outputs=[TensorSpec(**spec) for spec in raw["outputs"]],
            image=dict(raw["image"]),
            num_image_tokens=raw["num_image_tokens"],
            max_text_tokens=raw["max_text_tokens"],
            special_tokens=dict(raw["special_tokens"]),
            models={p: GraphFiles.from_json(entry) for p, entry in raw["models"].items()},
            files={
                name: FileRecord(entry["bytes"], entry["sha256"], entry.get("required"))
                for name, entry in raw["files"].items()
            },
            num_reason_tokens=raw.get("num_reason_tokens"),
            num_summary_tokens=raw.get("num_summary_tokens"),
            matryoshka_dims=raw.get("matryoshka_dims"),
            graph=raw.get("graph"),
            instructions=raw.get("instructions"),
            opset=raw.get("opset"),
            max_batch=raw.get("max_batch"),
            max_sequence=raw.get("max_sequence"),
            max_patches=raw.get("max_patches"),
            source_checkpoint=raw.get("source_checkpoint"),
            exported_with=raw.get("exported_with"),
            engines=raw.get("engines"),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "format_version": self.format_version,
            "embedding_dim": self.embedding_dim,
            "num_reason_tokens": self.num_reason_tokens,
            "num_summary_tokens": self.num_summary_tokens,
            "matryoshka_dims": None if self.matryoshka_dims is None else list(self.matryoshka_dims),
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
            "graph": self.graph,
            "image": dict(self.image),
            "num_image_tokens": self.num_image_tokens,
            "max_text_tokens": self.max_text_tokens,
            "special_tokens": dict(self.special_tokens),
            "instructions": self.instructions,
            "opset": self.opset,
            "max_batch": self.max_batch,
            "max_sequence": self.max_sequence,
            "max_patches": self.max_patches,
            "models": {p: entry.to_json() for p, entry in self.models.items()},
            "files": {name: entry.to_json() for name, entry in self.files.items()},
            "source_checkpoint": self.source_checkpoint,
            "exported_with": self.exported_with,
            "engines": self.engines,
        }
        out = {key: values[key] for key in _ORDER if values[key] is not None}
        out.update(self.extra)
        return out

    def graph_files(self) -> set[str]:
        """Every graph and external-data file the models name (the shared files are the rest)."""
        names: set[str] = set()
        for entry in self.models.values():
            for graph in (entry, entry.text, entry.routed):
                if graph is not None:
                    names.update([graph.path, *graph.external_data])
        return names
