"""Issue 19's boundaries: every library, file, store and OS failure becomes one named
``lame_runtime.errors`` class (APIs) or one ``prog: error:`` line with exit 2 (CLIs), and one
image rule holds for every kind of input. Each case below is a bad input that was *not* in the
earlier tables (tests/runtime/test_reliab_*.py); the README's bad-input table lists them."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from lame_runtime import Embedder, Index
from lame_runtime.artifact.persist import check_npz, writer_lock
from lame_runtime.cli.search import main as search_main
from lame_runtime.errors import (ArtifactError, BusyError, IndexFileError, InputError,
                                 InputTypeError, LameError, StoreError)
from lame_runtime.inputs.images import ImageConfig, load_image
from runtime_fixtures import runtime_artifact  # noqa: F401  (a fixture)

DEEP = "[" * 100_000 + "]" * 100_000  # deeper than any recursion limit


class Ctx:
    def __init__(self, root: Path, artifact: Path):
        self.root, self.artifact = root, artifact
        self.embedder = Embedder(artifact)
        rng = np.random.default_rng(0)
        self.pixels = rng.integers(0, 256, (16, 64, 3), dtype=np.uint8)
        self.png = root / "ok.png"
        Image.fromarray(self.pixels).save(self.png)
        raw = self.png.read_bytes()
        self.truncated = root / "truncated.png"
        self.truncated.write_bytes(raw[: len(raw) // 2])
        self.big = root / "big.png"  # 4000x4000 declared, a few KB on disk
        Image.new("1", (4000, 4000)).save(self.big)
        self.nan_tiff = root / "nan.tif"
        values = np.full((16, 64), 0.5, np.float32)
        values[3, 3] = np.nan
        Image.fromarray(values, mode="F").save(self.nan_tiff)
        index = Index(self.embedder.dim)
        index.add(np.eye(self.embedder.dim, dtype=np.float32)[:3], ["a", "b", "c"])
        self.index_path = root / "idx"
        index.save(self.index_path)

    def copy_artifact(self, name: str, edit: Callable[[dict], None]) -> Path:
        target = self.root / name
        shutil.copytree(self.artifact, target)
        manifest_path = target / "lame_artifact.json"
        manifest = json.loads(manifest_path.read_text())
        edit(manifest)
        manifest_path.write_text(json.dumps(manifest))
        return target

    def index_copy(self, name: str) -> tuple[Path, Path, dict]:
        folder = self.root / name
        folder.mkdir()
        for path in self.root.glob("idx*"):
            shutil.copy(path, folder / path.name)
        json_path = folder / "idx.json"
        return folder / "idx", json_path, json.loads(json_path.read_text())


@pytest.fixture(scope="module")
def ctx(runtime_artifact, tmp_path_factory) -> Ctx:
    return Ctx(tmp_path_factory.mktemp("boundaries"), runtime_artifact)


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


def _index_json(c: Ctx, name: str, text: bytes) -> Path:
    stem, json_path, _ = c.index_copy(name)
    json_path.write_bytes(text)
    return stem


def _npz_claiming(c: Ctx, name: str, shape: tuple, dtype: str = "<f4",
                  payload: bytes = b"\0" * 64) -> Path:
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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _qdrant_unreachable(c: Ctx):
    pytest.importorskip("qdrant_client")
    from lame_runtime.retrieval.qdrant_store import QdrantStore

    return QdrantStore(f"http://127.0.0.1:{_free_port()}", "lame", dim=8)


def _corrupt_faiss(c: Ctx):
    pytest.importorskip("faiss")
    from lame_runtime.artifact.persist import sha256
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
    ("closed PIL image", lambda c: c.embedder.encode(images=[c.png, _closed_image(c)]),
     InputError, "images[1]"),
    ("lazily opened truncated PIL image", lambda c: c.embedder.encode(images=[_lazy_truncated(c)]),
     InputError, "images[0]"),
    ("mode-F image with NaN", lambda c: c.embedder.encode(images=[_mode_f([[0.5, np.nan]] * 4)]),
     InputError, "NaN"),
    ("mode-F image above 1", lambda c: c.embedder.encode(images=[_mode_f([[0.5, 2.0]] * 4)]),
     InputError, "[0, 1]"),
    ("mode-I image above 65535",
     lambda c: c.embedder.encode(images=[Image.fromarray(np.full((4, 8), 70000, np.int32))]),
     InputError, "65535"),
    ("float TIFF file with NaN", lambda c: c.embedder.encode(images=[c.nan_tiff]),
     InputError, "NaN"),
    ("image over max_pixels (path, header only)",
     lambda c: Embedder(c.artifact, max_pixels=1_000_000).encode(images=[c.big]),
     InputError, "exceeds the limit"),
    ("image over max_pixels (array)",
     lambda c: Embedder(c.artifact, max_pixels=100).encode(images=[c.pixels]),
     InputError, "exceeds the limit"),
    ("image over max_pixels (PIL)",
     lambda c: Embedder(c.artifact, max_pixels=100).encode(images=[Image.fromarray(c.pixels)]),
     InputError, "exceeds the limit"),
    ("max_pixels zero", lambda c: Embedder(c.artifact, max_pixels=0), InputError, "max_pixels"),
    ("max_pixels a string", lambda c: Embedder(c.artifact, max_pixels="8M"), InputError,
     "max_pixels"),
    ("lone surrogate in a text", lambda c: c.embedder.encode(texts=["ok", "bad \udc80 text"]),
     InputError, "texts[1] is not valid Unicode"),
    ("lone surrogate in a query", lambda c: c.embedder.encode_queries(texts=["\ud800"]),
     InputError, "U+D800"),
    ("lone surrogate in encode_iter",
     lambda c: list(c.embedder.encode_iter(["fine", "x\udfff"], batch_size=1)),
     InputError, "texts[1]"),
    ("manifest nested 100,000 deep", lambda c: Embedder(_nested_manifest(c)), ArtifactError,
     "nested too deeply"),
    ("manifest with a 5,000-digit integer", lambda c: Embedder(_huge_int_manifest(c)),
     ArtifactError, "not valid JSON"),
    ("image config file nested deep",
     lambda c: ImageConfig.load(_nested_preprocessor(c) / "preprocessor_config.json"),
     InputError, "nested too deeply"),
    ("index metadata nested deep", lambda c: Index.load(_index_json(c, "i_deep", DEEP.encode())),
     IndexFileError, "nested too deeply"),
    ("index metadata not UTF-8",
     lambda c: Index.load(_index_json(c, "i_latin1", b'{"format": "\xe9"}')),
     IndexFileError, "not UTF-8"),
    ("index metadata a JSON array", lambda c: Index.load(_index_json(c, "i_array", b"[1, 2]")),
     IndexFileError, "lame"),
    ("npz header claims 10^12 rows",
     lambda c: check_npz(_npz_claiming(c, "absurd.npz", (10**12, 8)), IndexFileError),
     IndexFileError, "claims shape"),
    ("npz header claims a negative-free mismatch",
     lambda c: check_npz(_npz_claiming(c, "short.npz", (4, 8)), IndexFileError),
     IndexFileError, "holds 64"),
    ("npz with a pickled object array", lambda c: check_npz(_object_npz(c), IndexFileError),
     IndexFileError, "pickle"),
    ("npz that is not a zip",
     lambda c: check_npz(c.png, IndexFileError), IndexFileError, "not a readable npz"),
    ("corrupt FAISS blob with consistent hashes", _corrupt_faiss, IndexFileError,
     "FAISS file cannot be read"),
    ("Qdrant URL with nothing listening", _qdrant_unreachable, StoreError, "http://127.0.0.1:"),
    ("manifest embedding_dim disagrees with the graph",
     lambda c: Embedder(c.copy_artifact("dim_lie", lambda m: m.update(
         embedding_dim=m["embedding_dim"] * 2))),
     ArtifactError, "manifest and graph disagree"),
    ("manifest output name disagrees with the graph",
     lambda c: Embedder(c.copy_artifact("name_lie", lambda m: m["outputs"][0].update(
         name="vectors"))),
     ArtifactError, "manifest names output 'vectors'"),
    ("second writer of one index (same process)",
     lambda c: _two_locks(c.root / "locked_idx.json"), BusyError, "being written"),
]


def _png_claiming(c: Ctx, width: int, height: int) -> Path:
    """A 60-byte PNG whose header declares ``width`` x ``height`` (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path = c.root / f"claims_{width}x{height}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))
    return path


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
    ("a folder given as an image", lambda c: c.embedder.encode(images=[c.root]), InputError,
     "is a directory"),
    ("image path given as bytes", lambda c: c.embedder.encode(images=[str(c.png).encode()]),
     InputTypeError, "images[0] (bytes)"),
    ("encoded PNG bytes instead of a path",
     lambda c: c.embedder.encode(images=[c.png.read_bytes()]), InputTypeError,
     "unsupported image"),
    ("a text file named .png", lambda c: c.embedder.encode(images=[_fake_png(c)]), InputError,
     "cannot read image"),
    ("PNG header declaring 10^10 pixels (Pillow's own bomb limit)",
     lambda c: c.embedder.encode(images=[_png_claiming(c, 100_000, 100_000)]), InputError,
     "exceeds the limit"),
    ("PNG header declaring 5000x5000 (our limit, header only)",
     lambda c: Embedder(c.artifact, max_pixels=20_000_000).encode(
         images=[_png_claiming(c, 5000, 5000)]), InputError, "exceeds the limit"),
    ("int64 image array", lambda c: load_image(np.full((8, 8, 3), 1000, np.int64)), LameError,
     "uint8, uint16 or float"),
    ("bool image array", lambda c: load_image(np.ones((8, 8), bool)), LameError, "got bool"),
    ("complex image array", lambda c: load_image(np.ones((8, 8), np.complex64)), LameError,
     "complex64"),
    ("object image array", lambda c: load_image(np.array([[None]], dtype=object)), LameError,
     "got object"),
    ("negative float image", lambda c: load_image(np.full((8, 8), -0.5, np.float32)),
     InputError, "[0, 1]"),
    ("image array with 2 channels", lambda c: load_image(np.zeros((8, 8, 2), np.uint8)),
     InputError, "HxWx3"),
    ("image array with 5 channels", lambda c: load_image(np.zeros((8, 8, 5), np.uint8)),
     InputError, "(8, 8, 5)"),
    ("text given as bytes", lambda c: c.embedder.encode(texts=["ok", b"abc"]), LameError,
     "texts[1]"),
    ("instruction with a lone surrogate",
     lambda c: c.embedder.encode_queries(texts=["a"], instruction="find \ud800"), InputError,
     "U+D800"),
    ("batch_size given as a string", lambda c: c.embedder.encode(texts=["a"], batch_size="2"),
     InputError, "batch_size"),
    ("unknown precision", lambda c: Embedder(c.artifact, precision="fp8"), InputError, "fp8"),
    ("empty manifest", lambda c: Embedder(_manifest_text(c, "m_empty", lambda t: b"")),
     ArtifactError, "not valid JSON"),
    ("manifest saved as UTF-16",
     lambda c: Embedder(_manifest_text(c, "m_utf16", lambda t: t.encode("utf-16"))),
     ArtifactError, "not UTF-8"),
    ("manifest with embedding_dim given twice",
     lambda c: Embedder(_manifest_text(c, "m_dup", lambda t: t.replace(
         "{", '{"embedding_dim": 3, ', 1).encode())), ArtifactError, "appears twice"),
    ("manifest with NaN for embedding_dim",
     lambda c: Embedder(_manifest_text(c, "m_nan", lambda t: t.replace(
         '"embedding_dim": ', '"embedding_dim": NaN, "was": ', 1).encode())), ArtifactError,
     "embedding_dim"),
    ("tokenizer.json rewritten", lambda c: Embedder(_tokenizer_rewritten(c)), ArtifactError,
     "tokenizer.json"),
    ("graph replaced by a folder", lambda c: Embedder(_listed_file_replaced_by_folder(c)),
     ArtifactError, "not a regular file"),
    ("Index.load of a folder without an index", lambda c: Index.load(c.root), LameError,
     "index file not found"),
    ("Index.load of an integer", lambda c: Index.load(5), LameError, "got int"),
    ("search with a NaN query", lambda c: _index(c).search(_vectors(c, value=np.nan)),
     InputError, "NaN"),
    ("search with a 3-D query", lambda c: _index(c).search(_vectors(c)[None]), InputError,
     "2-D"),
    ("search with k as a string", lambda c: _index(c).search(_vectors(c), k="3"), InputError,
     "k must be"),
    ("add with fewer ids than vectors", lambda c: _index(c).add(_vectors(c, 2), ["x"]),
     InputError, "1 ids for 2 vectors"),
    ("add with an integer id", lambda c: _index(c).add(_vectors(c), [5]), LameError,
     "ids must be strings"),
    ("add with more payloads than ids", lambda c: _index(c).add(_vectors(c), ["q"], [{}, {}]),
     InputError, "2 payloads for 1 ids"),
    ("save under a regular file", lambda c: _index(c).save(c.png / "idx"), LameError,
     "ok.png"),
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


def _cli(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, the error lines of stderr: progress bars are not errors)."""
    code = search_main(args)
    err = capsys.readouterr().err
    return code, "".join(line + "\n" for line in err.replace("\r", "\n").splitlines()
                         if line.strip() and not line.startswith("embedding:"))


def _lock_holder(target: Path) -> subprocess.Popen:
    """A real second process holding the writer lock of ``target`` until killed."""
    code = ("import sys, time; from lame_runtime.artifact.persist import writer_lock\n"
            f"with writer_lock({str(target)!r}):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_process_is_refused_and_lock_dies_with_holder(ctx, capsys, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(ctx.pixels, i, axis=1)).save(images / f"{i}.png")
    out = tmp_path / "index"
    holder = _lock_holder(tmp_path / "index.json")
    try:
        code, err = _cli(["index", "--model", str(ctx.artifact), "--images", str(images),
                          "--out", str(out)], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "being written by another process" in err and f"pid {holder.pid}" in err
        assert not (tmp_path / "index.json").exists()  # the refused writer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock with its holder: no stale lock after a kill.
    code, err = _cli(["index", "--model", str(ctx.artifact), "--images", str(images),
                      "--out", str(out)], capsys)
    assert code == 0, err
    assert len(Index.load(out)) == 3


def test_image_to_image_finds_the_image_itself(ctx, capsys, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.roll(ctx.pixels, 7 * i, axis=0)).save(images / f"{i}.png")
    out = tmp_path / "index"
    assert _cli(["index", "--model", str(ctx.artifact), "--images", str(images),
                 "--out", str(out)], capsys)[0] == 0
    for i in range(4):
        code = search_main(["query", "--model", str(ctx.artifact), "--index", str(out),
                            "--image", str(images / f"{i}.png"), "--image-to-image", "-k", "1",
                            "--json"])
        result = json.loads(capsys.readouterr().out)["results"][0]
        assert code == 0 and result["id"].endswith(f"{i}.png")
        assert result["score"] == pytest.approx(1.0, abs=1e-4)


CLI_CASES: list[tuple[str, Callable[[Ctx, Path], list[str]], str]] = [
    ("unknown option is one line", lambda c, t: ["query", "--bogus"], "No such option"),
    ("missing --model", lambda c, t: ["query", "hi"], "Missing option"),
    ("--max-pixels 0", lambda c, t: ["query", "hi", "--model", str(c.artifact), "--index",
                                     str(c.index_path), "--max-pixels", "0"], "max-pixels"),
    ("query image over --max-pixels", lambda c, t: [
        "query", "--model", str(c.artifact), "--index", str(c.index_path), "--image",
        str(c.big), "--max-pixels", "1000"], "exceeds the limit"),
    ("--image-to-image with a text", lambda c, t: [
        "query", "hi", "--model", str(c.artifact), "--index", str(c.index_path), "--image",
        str(c.png), "--image-to-image"], "--image-to-image takes --image alone"),
    ("index --out under a regular file", lambda c, t: [
        "index", "--model", str(c.artifact), "--images", str(c.root), "--pattern", "ok.png",
        "--out", str(c.png / "idx")], "ok.png"),
    ("query against a deeply nested index json", lambda c, t: [
        "query", "hi", "--model", str(c.artifact), "--index",
        str(_index_json(c, f"cli_deep_{t.name}", DEEP.encode()))], "nested too deeply"),
    ("query with an unreachable Qdrant URL", lambda c, t: [
        "query", "hi", "--model", str(c.artifact), "--qdrant",
        f"http://127.0.0.1:{_free_port()}"], "Qdrant at http://127.0.0.1:"),
]


def _bomb_folder(c: Ctx) -> Path:
    folder = c.root / "bomb_images"
    folder.mkdir(exist_ok=True)
    shutil.copy(_png_claiming(c, 100_000, 100_000), folder / "bomb.png")
    return folder


CLI_CASES += [
    ("query -k 0", lambda c, t: ["query", "hi", "--model", str(c.artifact), "--index",
                                 str(c.index_path), "-k", "0"], "k"),
    ("query --image that does not exist", lambda c, t: [
        "query", "--model", str(c.artifact), "--index", str(c.index_path), "--image",
        str(c.root / "nope.png")], "nope.png"),
    ("query --image that is a folder", lambda c, t: [
        "query", "--model", str(c.artifact), "--index", str(c.index_path), "--image",
        str(c.root)], "is a directory"),
    ("query --index that does not exist", lambda c, t: [
        "query", "hi", "--model", str(c.artifact), "--index", str(c.root / "no_index")],
     "no_index"),
    ("index --checkpoint-every 0", lambda c, t: [
        "index", "--model", str(c.artifact), "--images", str(c.root), "--pattern", "ok.png",
        "--out", str(t / "idx"), "--checkpoint-every", "0"], "checkpoint-every"),
    ("index a folder holding a PNG bomb", lambda c, t: [
        "index", "--model", str(c.artifact), "--images", str(_bomb_folder(c)),
        "--out", str(t / "idx")], "bomb.png"),
    ("query --model pointing at an image file", lambda c, t: [
        "query", "hi", "--model", str(c.png), "--index", str(c.index_path)], "ok.png"),
]


@pytest.mark.parametrize("name,build,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_boundary_is_one_line_exit_2(ctx, capsys, tmp_path, name, build, message):
    if "Qdrant" in message:
        pytest.importorskip("qdrant_client")
    code, err = _cli(build(ctx, tmp_path), capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("lame-search: error: "), err
    assert "internal error" not in err and message in err, err


def test_one_image_rule_across_kinds(ctx, tmp_path):
    """The same float image gives the same pixels as a path (float TIFF), a PIL image (mode F)
    and an array; a 16-bit image likewise; EXIF orientation is applied to files and PIL
    images."""
    values = np.linspace(0, 1, 16 * 64, dtype=np.float32).reshape(16, 64)
    tiff = tmp_path / "float.tif"
    Image.fromarray(values, mode="F").save(tiff)
    as_path, as_pil, as_array = (np.asarray(load_image(x)) for x in
                                 (tiff, Image.fromarray(values, mode="F"), values))
    np.testing.assert_array_equal(as_path, as_array)
    np.testing.assert_array_equal(as_pil, as_array)
    assert as_array.max() == 255 and as_array.min() == 0  # scaled, not read as black
    sixteen = (values * 65535).astype(np.uint16)
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(sixteen))),
                                  np.asarray(load_image(sixteen)))
    rotated = tmp_path / "exif.jpg"  # stored 64x16, displayed 16x64 (orientation 6: 90° CW)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(ctx.pixels).save(rotated, exif=exif, quality=100)
    shown = load_image(rotated)
    assert shown.size == (16, 64)
    assert load_image(Image.open(rotated)).size == (16, 64)
    stored = np.asarray(Image.open(rotated).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(shown), np.rot90(stored, k=-1))


def test_pixel_limit_is_checked_before_decoding(ctx):
    """The declared size is refused from the header: the 16 Mpx file is never decoded."""
    start = time.perf_counter()
    with pytest.raises(InputError, match="exceeds the limit"):
        load_image(ctx.big, max_pixels=1_000_000)
    assert load_image(ctx.big).size == (4000, 4000)  # under the default 25 Mpx it decodes
    assert time.perf_counter() - start >= 0  # (no timing claim: the header path is the test)


def test_hash_cache_sees_a_rewrite_with_restored_mtime(ctx, tmp_path):
    """Rewriting a file in place and restoring its size and mtime (``touch -d``) must not fool
    the hash cache: ctime moves and cannot be set back."""
    import os

    from lame_runtime.artifact.contract import Artifact

    target = tmp_path / "art"
    shutil.copytree(ctx.artifact, target)
    Artifact.open(target).file_for("fp32")  # hashes cached
    manifest = json.loads((target / "lame_artifact.json").read_text())
    name = manifest["models"]["fp32"]["path"]
    path = target / name
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    time.sleep(0.01)
    with open(path, "r+b") as handle:  # same inode, same size
        handle.write(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    with pytest.raises(LameError, match="sha256|does not match"):
        Artifact.open(target).file_for("fp32")


def test_table_size():
    assert len(API_CASES) + len(CLI_CASES) >= 30


def _all_lame_errors() -> list[type[BaseException]]:
    import lame_runtime.errors as errors

    found, todo = [], [errors.LameError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: c.__name__)


BOUNDARY_ERRORS = [cls("a named problem: /some/path") for cls in _all_lame_errors()] + [
    OSError(28, "No space left on device", "/data/index.npz"),
    PermissionError(13, "Permission denied", "/data"),
    MemoryError(),
]


@pytest.mark.parametrize("err", BOUNDARY_ERRORS, ids=lambda e: type(e).__name__)
def test_no_boundary_class_is_an_internal_error(err):
    """Every error class the boundaries raise (each ``lame_runtime.errors`` class, found by
    walking the hierarchy, so a new class is covered the day it is added) and the OS's and
    memory's errors print one line and exit 2 (3 for a failed gate), never "internal error"."""
    import click

    from lame_runtime.cli.tools import invoke
    from lame_runtime.errors import GateError

    @click.command()
    def boom():
        raise err

    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = invoke(boom, [], "prog")
    text = stderr.getvalue()
    assert code == (3 if isinstance(err, GateError) else 2), text
    assert text.count("\n") == 1 and text.startswith("prog: error: "), text
    assert "internal error" not in text, text


def test_every_console_script_goes_through_the_one_wrapper(capsys):
    """Each console script in pyproject.toml turns a usage error into the wrapper's one line:
    so the mapping above holds for every CLI, not only lame-search."""
    import importlib
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())[
        "project"]["scripts"]
    assert scripts
    for name, target in scripts.items():
        module = target.split(":")[0]  # run() is sys.exit(main(argv)): call main
        try:
            entry = importlib.import_module(module).main
        except ImportError as missing:  # the base install has no torch: lame-* need the extra
            if "torch" in str(missing) or "transformers" in str(missing):
                continue
            raise
        code = entry(["--no-such-option-anywhere"])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert err.count("\n") == 1 and "error:" in err and "internal error" not in err, (
            name, err)


def test_odd_exif_is_ignored_not_fatal(ctx, tmp_path):
    """An EXIF orientation outside 1..8, or an EXIF block of garbage, is ignored (the image is
    used as stored), never an error: EXIF is advice, the pixels are the data."""
    exif = Image.Exif()
    exif[0x0112] = 9
    odd = tmp_path / "orientation9.jpg"
    Image.fromarray(ctx.pixels).save(odd, exif=exif, quality=100)
    assert load_image(odd).size == (64, 16)
    raw = bytearray(odd.read_bytes())
    start = raw.find(b"Exif")
    raw[start + 10:start + 30] = b"\xff" * 20
    garbage = tmp_path / "garbage_exif.jpg"
    garbage.write_bytes(bytes(raw))
    assert load_image(garbage).size == (64, 16)
    assert ctx.embedder.encode(images=[odd, garbage]).shape == (2, ctx.embedder.dim)


def test_readme_runtime_snippet_runs_as_written(ctx, tmp_path, monkeypatch):
    """The Python block under "## Runtime" in the README, executed verbatim in a folder laid
    out as the main job leaves it (runs/lame-onnx, data/digits/images/eval_*)."""
    import os
    import re

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Runtime (`lame_runtime`)"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "runs").mkdir()
    os.symlink(ctx.artifact, tmp_path / "runs" / "lame-onnx")
    images = tmp_path / "data" / "digits" / "images"
    images.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.roll(ctx.pixels, 5 * i, axis=1)).save(images / f"eval_{i:05d}.png")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(snippet, "README.md (runtime snippet)", "exec"), scope)
    assert len(scope["index"]) == 6
    assert scope["same"][1][0][0].endswith("eval_00000.png")  # image -> image finds itself
