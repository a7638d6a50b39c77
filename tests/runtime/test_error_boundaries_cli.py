"""Error boundaries of lame-search's command line: each bad invocation is one
``lame-search: error:`` line and exit 2, never an internal error (the API side of the same
table is test_error_boundaries.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
from boundary_fixtures import DEEP, Ctx, ctx, free_port, index_json, png_claiming, run_cli, runtime_artifact  # noqa: F401  (ctx and runtime_artifact are fixtures)

CLI_CASES: list[tuple[str, Callable[[Ctx, Path], list[str]], str]] = [
    ("unknown option is one line", lambda c, t: ["query", "--bogus"], "No such option"),
    ("missing --model", lambda c, t: ["query", "hi"], "Missing option"),
    (
        "--max-pixels 0",
        lambda c, t: [
            "query",
            "hi",
            "--model",
            str(c.artifact),
            "--index",
            str(c.index_path),
            "--max-pixels",
            "0",
        ],
        "max-pixels",
    ),
    (
        "query image over --max-pixels",
        lambda c, t: [
            "query",
            "--model",
            str(c.artifact),
            "--index",
            str(c.index_path),
            "--image",
            str(c.big),
            "--max-pixels",
            "1000",
        ],
        "exceeds the limit",
    ),
    (
        "--image-to-image with a text",
        lambda c, t: [
            "query",
            "hi",
            "--model",
            str(c.artifact),
            "--index",
            str(c.index_path),
            "--image",
            str(c.png),
            "--image-to-image",
        ],
        "--image-to-image takes --image alone",
    ),
    (
        "index --out under a regular file",
        lambda c, t: [
            "index",
            "--model",
            str(c.artifact),
            "--images",
            str(c.root),
            "--pattern",
            "ok.png",
            "--out",
            str(c.png / "idx"),
        ],
        "ok.png",
    ),
    (
        "query against a deeply nested index json",
        lambda c, t: [
            "query",
            "hi",
            "--model",
            str(c.artifact),
            "--index",
            str(index_json(c, f"cli_deep_{t.name}", DEEP.encode())),
        ],
        "nested too deeply",
    ),
    (
        "query with an unreachable Qdrant URL",
        lambda c, t: [
            "query",
            "hi",
            "--model",
            str(c.artifact),
            "--qdrant",
            f"http://127.0.0.1:{free_port()}",
        ],
        "Qdrant at http://127.0.0.1:",
    ),
]


def _bomb_folder(c: Ctx) -> Path:
    folder = c.root / "bomb_images"
    folder.mkdir(exist_ok=True)
    shutil.copy(png_claiming(c, 100_000, 100_000), folder / "bomb.png")
    return folder


CLI_CASES += [
    (
        "query -k 0",
        lambda c, t: ["query", "hi", "--model", str(c.artifact), "--index", str(c.index_path), "-k", "0"],
        "k",
    ),
    (
        "query --image that does not exist",
        lambda c, t: [
            "query",
            "--model",
            str(c.artifact),
            "--index",
            str(c.index_path),
            "--image",
            str(c.root / "nope.png"),
        ],
        "nope.png",
    ),
    (
        "query --image that is a folder",
        lambda c, t: [
            "query",
            "--model",
            str(c.artifact),
            "--index",
            str(c.index_path),
            "--image",
            str(c.root),
        ],
        "is a directory",
    ),
    (
        "query --index that does not exist",
        lambda c, t: ["query", "hi", "--model", str(c.artifact), "--index", str(c.root / "no_index")],
        "no_index",
    ),
    (
        "index --checkpoint-every 0",
        lambda c, t: [
            "index",
            "--model",
            str(c.artifact),
            "--images",
            str(c.root),
            "--pattern",
            "ok.png",
            "--out",
            str(t / "idx"),
            "--checkpoint-every",
            "0",
        ],
        "checkpoint-every",
    ),
    (
        "index a folder holding a PNG bomb",
        lambda c, t: [
            "index",
            "--model",
            str(c.artifact),
            "--images",
            str(_bomb_folder(c)),
            "--out",
            str(t / "idx"),
        ],
        "bomb.png",
    ),
    (
        "query --model pointing at an image file",
        lambda c, t: ["query", "hi", "--model", str(c.png), "--index", str(c.index_path)],
        "ok.png",
    ),
]


@pytest.mark.parametrize("name,build,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_boundary_is_one_line_exit_2(ctx, capsys, tmp_path, name, build, message):
    if "Qdrant" in message:
        pytest.importorskip("qdrant_client")
    code, err = run_cli(build(ctx, tmp_path), capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("lame-search: error: "), err
    assert "internal error" not in err and message in err, err


def test_table_size():
    assert len(CLI_CASES) >= 8
