"""Error boundaries: every library, file, store and OS failure becomes one named
``lame_runtime.errors`` class (APIs) or one ``prog: error:`` line with exit 2 (CLIs), and one
image rule holds for every kind of input. Each case below is a bad input that was *not* in the
earlier tables (test_bad_input_table.py, test_input_validation.py); the README's bad-input table lists them."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from boundary_fixtures import DEEP, Ctx, ctx, free_port, index_json, png_claiming, run_cli, runtime_artifact  # noqa: F401  (ctx and runtime_artifact are fixtures)
from PIL import Image

from lame_runtime import Embedder, Index, RuntimeOptions
from lame_runtime.errors import (
    ArtifactError,
    BusyError,
    IndexFileError,
    InputError,
    InputTypeError,
    LameError,
    StoreError,
)
from lame_runtime.inputs.images import ImageConfig, load_image
from lame_runtime.persist import check_npz, writer_lock


def _closed_image(c: Ctx) -> Image.Image:
    img = Image.open(c.png)
    img.load()
    img.close()
    return img


def _lazy_truncated(c: Ctx) -> Image.Image:
    return Image.open(c.truncated)  # opened lazily: decoding fails only at load()


def _mode_f(values) -> Image.Image:
    return Image.fromarray(np.asarray(values, np.float32), mode="F")


def _nested_manifest(c: Ctx) -> Path:
    target = c.root / "deep_manifest"
    shutil.copytree(c.artifact, target)
    (target / "lame_artifact.json").write_text('{"a": ' + DEEP + "}")
    return target


def _huge_int_manifest(c: Ctx) -> Path:
    target = c.root / "hugeint_manifest"
    shutil.copytree(c.artifact, target)
    (target / "lame_artifact.json").write_text('{"format_version": ' + "9" * 5000 + "}")
    return target


def _nested_preprocessor(c: Ctx) -> Path:
    target = c.root / "deep_pre"
    shutil.copytree(c.artifact, target)
    (target / "preprocessor_config.json").write_text(DEEP)
    return target


def _npz_claiming(c: Ctx, name: str, shape: tuple, dtype: str = "<f4", payload: bytes = b"\0" * 64) -> Path:
    """A stored .npz whose header claims ``shape`` but holds ``payload`` bytes."""
    path = c.root / name
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("vectors.npy", buffer.getvalue() + payload)
    return path


def _object_npz(c: Ctx) -> Path:
    path = c.root / "objects.npz"
    np.savez(path, vectors=np.array([{"a": 1}], dtype=object))
    return path


def _qdrant_unreachable(c: Ctx):
    pytest.importorskip("qdrant_client")
    from lame_runtime.retrieval.qdrant_store import QdrantStore

    return QdrantStore(f"http://127.0.0.1:{free_port()}", "lame", dim=8)


def _corrupt_faiss(c: Ctx):
    pytest.importorskip("faiss")
    from lame_runtime.persist import sha256
    from lame_runtime.retrieval.ann import AnnConfig, AnnIndex

    index = AnnIndex(8, AnnConfig(kind="flat", storage="float32"))
    index.add(np.eye(8, dtype=np.float32)[:2], ["a", "b"])
    folder = c.root / "faiss_bad"
    folder.mkdir()
    _, json_path = index.save(folder / "ann")
    meta = json.loads(json_path.read_text())
    blob = folder / meta["files"]["faiss"]["path"]
    blob.write_bytes(b"IxFl" + b"\xff" * 40)  # a FAISS tag, then garbage
    meta["files"]["faiss"]["sha256"] = sha256(blob)  # consistent hashes: only FAISS can tell
    meta["files"]["faiss"]["bytes"] = blob.stat().st_size
    json_path.write_text(json.dumps(meta))
    return AnnIndex.load(folder / "ann")


# (name, call, error class, substring of the message)
API_CASES: list[tuple[str, Callable[[Ctx], Any], type, str]] = [
    (
        "closed PIL image",
        lambda c: c.embedder.encode(images=[c.png, _closed_image(c)]),
        InputError,
        "images[1]",
    ),
    (
        "lazily opened truncated PIL image",
        lambda c: c.embedder.encode(images=[_lazy_truncated(c)]),
        InputError,
        "images[0]",
    ),
    (
        "mode-F image with NaN",
        lambda c: c.embedder.encode(images=[_mode_f([[0.5, np.nan]] * 4)]),
        InputError,
        "NaN",
    ),
    (
        "mode-F image above 1",
        lambda c: c.embedder.encode(images=[_mode_f([[0.5, 2.0]] * 4)]),
        InputError,
        "[0, 1]",
    ),
    (
        "mode-I image above 65535",
        lambda c: c.embedder.encode(images=[Image.fromarray(np.full((4, 8), 70000, np.int32))]),
        InputError,
        "65535",
    ),
    ("float TIFF file with NaN", lambda c: c.embedder.encode(images=[c.nan_tiff]), InputError, "NaN"),
    (
        "image over max_pixels (path, header only)",
        lambda c: Embedder(c.artifact, options=RuntimeOptions(max_pixels=1_000_000)).encode(images=[c.big]),
        InputError,
        "exceeds the limit",
    ),
    (
        "image over max_pixels (array)",
        lambda c: Embedder(c.artifact, options=RuntimeOptions(max_pixels=100)).encode(images=[c.pixels]),
        InputError,
        "exceeds the limit",
    ),
    (
        "image over max_pixels (PIL)",
        lambda c: Embedder(c.artifact, options=RuntimeOptions(max_pixels=100)).encode(
            images=[Image.fromarray(c.pixels)]
        ),
        InputError,
        "exceeds the limit",
    ),
    (
        "max_pixels zero",
        lambda c: Embedder(c.artifact, options=RuntimeOptions(max_pixels=0)),
        InputError,
        "max_pixels",
    ),
    (
        "max_pixels a string",
        lambda c: Embedder(c.artifact, options=RuntimeOptions(max_pixels="8M")),
        InputError,
        "max_pixels",
    ),
    (
        "lone surrogate in a text",
        lambda c: c.embedder.encode(texts=["ok", "bad \udc80 text"]),
        InputError,
        "texts[1] is not valid Unicode",
    ),
    (
        "lone surrogate in a query",
        lambda c: c.embedder.encode_queries(texts=["\ud800"]),
        InputError,
        "U+D800",
    ),
    (
        "lone surrogate in encode_iter",
        lambda c: list(c.embedder.encode_iter(["fine", "x\udfff"], batch_size=1)),
        InputError,
        "texts[1]",
    ),
    (
        "manifest nested 100,000 deep",
        lambda c: Embedder(_nested_manifest(c)),
        ArtifactError,
        "nested too deeply",
    ),
    (
        "manifest with a 5,000-digit integer",
        lambda c: Embedder(_huge_int_manifest(c)),
        ArtifactError,
        "not valid JSON",
    ),
    (
        "image config file nested deep",
        lambda c: ImageConfig.load(_nested_preprocessor(c) / "preprocessor_config.json"),
        InputError,
        "nested too deeply",
    ),
    (
        "index metadata nested deep",
        lambda c: Index.load(index_json(c, "i_deep", DEEP.encode())),
        IndexFileError,
        "nested too deeply",
    ),
    (
        "index metadata not UTF-8",
        lambda c: Index.load(index_json(c, "i_latin1", b'{"format": "\xe9"}')),
        IndexFileError,
        "not UTF-8",
    ),
    (
        "index metadata a JSON array",
        lambda c: Index.load(index_json(c, "i_array", b"[1, 2]")),
        IndexFileError,
        "lame",
    ),
    (
        "npz header claims 10^12 rows",
        lambda c: check_npz(_npz_claiming(c, "absurd.npz", (10**12, 8)), IndexFileError),
        IndexFileError,
        "claims shape",
    ),
    (
        "npz header claims a negative-free mismatch",
        lambda c: check_npz(_npz_claiming(c, "short.npz", (4, 8)), IndexFileError),
        IndexFileError,
        "holds 64",
    ),
    (
        "npz with a pickled object array",
        lambda c: check_npz(_object_npz(c), IndexFileError),
        IndexFileError,
        "pickle",
    ),
    (
        "npz that is not a zip",
        lambda c: check_npz(c.png, IndexFileError),
        IndexFileError,
        "not a readable npz",
    ),
    (
        "corrupt FAISS blob with consistent hashes",
        _corrupt_faiss,
        IndexFileError,
        "FAISS file cannot be read",
    ),
    ("Qdrant URL with nothing listening", _qdrant_unreachable, StoreError, "http://127.0.0.1:"),
    (
        "manifest embedding_dim disagrees with the graph",
        lambda c: Embedder(
            c.copy_artifact("dim_lie", lambda m: m.update(embedding_dim=m["embedding_dim"] * 2))
        ),
        ArtifactError,
        "manifest and graph disagree",
    ),
    (
        "manifest output name disagrees with the graph",
        lambda c: Embedder(c.copy_artifact("name_lie", lambda m: m["outputs"][0].update(name="vectors"))),
        ArtifactError,
        "manifest names output 'vectors'",
    ),
    (
        "second writer of one index (same process)",
        lambda c: _two_locks(c.root / "locked_idx.json"),
        BusyError,
        "being written",
    ),
]


def _fake_png(c: Ctx) -> Path:
    path = c.root / "not_an_image.png"
    path.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    return path


def _manifest_text(c: Ctx, name: str, edit: Callable[[str], bytes]) -> Path:
    target = c.root / name
    shutil.copytree(c.artifact, target)
    manifest = target / "lame_artifact.json"
    manifest.write_bytes(edit(manifest.read_text()))
    return target


def _listed_file_replaced_by_folder(c: Ctx) -> Path:
    target = c.root / "graph_is_a_folder"
    shutil.copytree(c.artifact, target)
    manifest = json.loads((target / "lame_artifact.json").read_text())
    graph = target / manifest["models"]["fp32"]["path"]
    graph.unlink()
    graph.mkdir()
    return target


def _tokenizer_rewritten(c: Ctx) -> Path:
    target = c.root / "tokenizer_rewritten"
    shutil.copytree(c.artifact, target)
    next(target.glob("**/tokenizer.json")).write_text("{}")
    return target


def _index(c: Ctx) -> Index:
    return Index.load(c.index_path)


def _vectors(c: Ctx, rows: int = 1, value: float = 1.0) -> np.ndarray:
    return np.full((rows, c.embedder.dim), value, np.float32)


# More bad inputs of our own, in the same classes (images, texts, artifact files, indexes).
API_CASES += [
    (
        "a folder given as an image",
        lambda c: c.embedder.encode(images=[c.root]),
        InputError,
        "is a directory",
    ),
    (
        "image path given as bytes",
        lambda c: c.embedder.encode(images=[str(c.png).encode()]),
        InputTypeError,
        "images[0] (bytes)",
    ),
    (
        "encoded PNG bytes instead of a path",
        lambda c: c.embedder.encode(images=[c.png.read_bytes()]),
        InputTypeError,
        "unsupported image",
    ),
    (
        "a text file named .png",
        lambda c: c.embedder.encode(images=[_fake_png(c)]),
        InputError,
        "cannot read image",
    ),
    (
        "PNG header declaring 10^10 pixels (Pillow's own bomb limit)",
        lambda c: c.embedder.encode(images=[png_claiming(c, 100_000, 100_000)]),
        InputError,
        "exceeds the limit",
    ),
    (
        "PNG header declaring 5000x5000 (our limit, header only)",
        lambda c: Embedder(c.artifact, options=RuntimeOptions(max_pixels=20_000_000)).encode(
            images=[png_claiming(c, 5000, 5000)]
        ),
        InputError,
        "exceeds the limit",
    ),
    (
        "int64 image array",
        lambda c: load_image(np.full((8, 8, 3), 1000, np.int64)),
        LameError,
        "uint8, uint16 or float",
    ),
    ("bool image array", lambda c: load_image(np.ones((8, 8), bool)), LameError, "got bool"),
    ("complex image array", lambda c: load_image(np.ones((8, 8), np.complex64)), LameError, "complex64"),
    ("object image array", lambda c: load_image(np.array([[None]], dtype=object)), LameError, "got object"),
    ("negative float image", lambda c: load_image(np.full((8, 8), -0.5, np.float32)), InputError, "[0, 1]"),
    ("image array with 2 channels", lambda c: load_image(np.zeros((8, 8, 2), np.uint8)), InputError, "HxWx3"),
    (
        "image array with 5 channels",
        lambda c: load_image(np.zeros((8, 8, 5), np.uint8)),
        InputError,
        "(8, 8, 5)",
    ),
    ("text given as bytes", lambda c: c.embedder.encode(texts=["ok", b"abc"]), LameError, "texts[1]"),
    (
        "instruction with a lone surrogate",
        lambda c: c.embedder.encode_queries(texts=["a"], instruction="find \ud800"),
        InputError,
        "U+D800",
    ),
    (
        "batch_size given as a string",
        lambda c: c.embedder.encode(texts=["a"], batch_size="2"),
        InputError,
        "batch_size",
    ),
    ("unknown precision", lambda c: Embedder(c.artifact, precision="fp8"), InputError, "fp8"),
    (
        "empty manifest",
        lambda c: Embedder(_manifest_text(c, "m_empty", lambda t: b"")),
        ArtifactError,
        "not valid JSON",
    ),
    (
        "manifest saved as UTF-16",
        lambda c: Embedder(_manifest_text(c, "m_utf16", lambda t: t.encode("utf-16"))),
        ArtifactError,
        "not UTF-8",
    ),
    (
        "manifest with embedding_dim given twice",
        lambda c: Embedder(
            _manifest_text(c, "m_dup", lambda t: t.replace("{", '{"embedding_dim": 3, ', 1).encode())
        ),
        ArtifactError,
        "appears twice",
    ),
    (
        "manifest with NaN for embedding_dim",
        lambda c: Embedder(
            _manifest_text(
                c,
                "m_nan",
                lambda t: t.replace('"embedding_dim": ', '"embedding_dim": NaN, "was": ', 1).encode(),
            )
        ),
        ArtifactError,
        "embedding_dim",
    ),
    (
        "tokenizer.json rewritten",
        lambda c: Embedder(_tokenizer_rewritten(c)),
        ArtifactError,
        "tokenizer.json",
    ),
    (
        "graph replaced by a folder",
        lambda c: Embedder(_listed_file_replaced_by_folder(c)),
        ArtifactError,
        "not a regular file",
    ),
    (
        "Index.load of a folder without an index",
        lambda c: Index.load(c.root),
        LameError,
        "index file not found",
    ),
    ("Index.load of an integer", lambda c: Index.load(5), LameError, "got int"),
    ("search with a NaN query", lambda c: _index(c).search(_vectors(c, value=np.nan)), InputError, "NaN"),
    ("search with a 3-D query", lambda c: _index(c).search(_vectors(c)[None]), InputError, "2-D"),
    ("search with k as a string", lambda c: _index(c).search(_vectors(c), k="3"), InputError, "k must be"),
    (
        "add with fewer ids than vectors",
        lambda c: _index(c).add(_vectors(c, 2), ["x"]),
        InputError,
        "1 ids for 2 vectors",
    ),
    ("add with an integer id", lambda c: _index(c).add(_vectors(c), [5]), LameError, "ids must be strings"),
    (
        "add with more payloads than ids",
        lambda c: _index(c).add(_vectors(c), ["q"], [{}, {}]),
        InputError,
        "2 payloads for 1 ids",
    ),
    ("save under a regular file", lambda c: _index(c).save(c.png / "idx"), LameError, "ok.png"),
]


def _two_locks(target: Path) -> None:
    with writer_lock(target):
        with writer_lock(target):
            pass


@pytest.mark.parametrize("name,call,error,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_boundary(ctx, name, call, error, message):
    with pytest.raises(error) as caught:
        call(ctx)
    assert message in str(caught.value), str(caught.value)
    assert isinstance(caught.value, LameError)


def test_table_size():
    assert len(API_CASES) >= 29
