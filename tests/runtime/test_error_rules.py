"""The rules behind the bad-input tables: one writer per index (real processes),
image->image search, one image rule for every input kind, the pixel limit read from the
header, the hash cache against restored mtimes, every error class through the CLI wrapper,
and the runtime page's snippet (docs/runtime.md) run verbatim."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from boundary_fixtures import ctx, lock_holder, run_cli, runtime_artifact  # noqa: F401  (ctx and runtime_artifact are fixtures)
from PIL import Image

from lame_runtime import Index
from lame_runtime.cli.search import main as search_main
from lame_runtime.errors import InputError, LameError
from lame_runtime.inputs.images import load_image


def test_second_writer_process_is_refused_and_lock_dies_with_holder(ctx, capsys, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.roll(ctx.pixels, i, axis=1)).save(images / f"{i}.png")
    out = tmp_path / "index"
    holder = lock_holder(tmp_path / "index.json")
    try:
        code, err = run_cli(
            ["index", "--model", str(ctx.artifact), "--images", str(images), "--out", str(out)], capsys
        )
        assert code == 2 and err.count("\n") == 1, err
        assert "being written by another process" in err and f"pid {holder.pid}" in err
        assert not (tmp_path / "index.json").exists()  # the refused writer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops the lock with its holder: no stale lock after a kill.
    code, err = run_cli(
        ["index", "--model", str(ctx.artifact), "--images", str(images), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert len(Index.load(out)) == 3


def test_image_to_image_finds_the_image_itself(ctx, capsys, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.roll(ctx.pixels, 7 * i, axis=0)).save(images / f"{i}.png")
    out = tmp_path / "index"
    assert (
        run_cli(["index", "--model", str(ctx.artifact), "--images", str(images), "--out", str(out)], capsys)[
            0
        ]
        == 0
    )
    for i in range(4):
        code = search_main(
            [
                "query",
                "--model",
                str(ctx.artifact),
                "--index",
                str(out),
                "--image",
                str(images / f"{i}.png"),
                "--image-to-image",
                "-k",
                "1",
                "--json",
            ]
        )
        result = json.loads(capsys.readouterr().out)["results"][0]
        assert code == 0 and result["id"].endswith(f"{i}.png")
        assert result["score"] == pytest.approx(1.0, abs=1e-4)


def test_one_image_rule_across_kinds(ctx, tmp_path):
    """The same float image gives the same pixels as a path (float TIFF), a PIL image (mode F)
    and an array; a 16-bit image likewise; EXIF orientation is applied to files and PIL
    images."""
    values = np.linspace(0, 1, 16 * 64, dtype=np.float32).reshape(16, 64)
    tiff = tmp_path / "float.tif"
    Image.fromarray(values, mode="F").save(tiff)
    as_path, as_pil, as_array = (
        np.asarray(load_image(x)) for x in (tiff, Image.fromarray(values, mode="F"), values)
    )
    np.testing.assert_array_equal(as_path, as_array)
    np.testing.assert_array_equal(as_pil, as_array)
    assert as_array.max() == 255 and as_array.min() == 0  # scaled, not read as black
    sixteen = (values * 65535).astype(np.uint16)
    np.testing.assert_array_equal(
        np.asarray(load_image(Image.fromarray(sixteen))), np.asarray(load_image(sixteen))
    )
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
    with pytest.raises(InputError, match="exceeds the limit"):
        load_image(ctx.big, max_pixels=1_000_000)
    assert load_image(ctx.big).size == (4000, 4000)  # under the default 25 Mpx it decodes


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

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
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
        assert err.count("\n") == 1 and "error:" in err and "internal error" not in err, (name, err)


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
    raw[start + 10 : start + 30] = b"\xff" * 20
    garbage = tmp_path / "garbage_exif.jpg"
    garbage.write_bytes(bytes(raw))
    assert load_image(garbage).size == (64, 16)
    assert ctx.embedder.encode(images=[odd, garbage]).shape == (2, ctx.embedder.dim)


def test_readme_runtime_snippet_runs_as_written(ctx, tmp_path, monkeypatch):
    """The Python block of the docs' Runtime page, executed verbatim in a folder laid
    out as the main job leaves it (runs/lame-onnx, data/digits/images/eval_*)."""
    import os
    import re

    readme = (Path(__file__).parents[2] / "docs" / "runtime.md").read_text()
    section = readme[readme.index("# Runtime (`lame_runtime`)") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "runs").mkdir()
    os.symlink(ctx.artifact, tmp_path / "runs" / "lame-onnx")
    images = tmp_path / "data" / "digits" / "images"
    images.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.roll(ctx.pixels, 5 * i, axis=1)).save(images / f"eval_{i:05d}.png")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(snippet, "docs/runtime.md (runtime snippet)", "exec"), scope)
    assert len(scope["index"]) == 6
    assert scope["same"][1][0][0].endswith("eval_00000.png")  # image -> image finds itself
