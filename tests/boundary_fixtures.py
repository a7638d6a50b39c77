"""Shared by the boundary tests (tests/runtime/test_error_boundaries.py: the bad-input tables;
test_error_rules.py: the rules behind them): one real tiny artifact, a few files made
from it, and the in-process lame-search runner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from runtime_fixtures import runtime_artifact  # noqa: F401  (a fixture ctx needs)

from lame_runtime import Embedder, Index
from lame_runtime.cli.search import main as search_main

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


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, the error lines of stderr: progress bars are not errors)."""
    code = search_main(args)
    err = capsys.readouterr().err
    return code, "".join(
        line + "\n"
        for line in err.replace("\r", "\n").splitlines()
        if line.strip() and not line.startswith("embedding:")
    )


def lock_holder(target: Path) -> subprocess.Popen:
    """A real second process holding the writer lock of ``target`` until killed."""
    code = (
        "import sys, time; from lame_runtime.persist import writer_lock\n"
        f"with writer_lock({str(target)!r}):\n    print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def index_json(c: Ctx, name: str, text: bytes) -> Path:
    stem, json_path, _ = c.index_copy(name)
    json_path.write_bytes(text)
    return stem


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_claiming(c: Ctx, width: int, height: int) -> Path:
    """A 60-byte PNG whose header declares ``width`` x ``height`` (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    path = c.root / f"claims_{width}x{height}.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )
    return path
