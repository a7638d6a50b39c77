"""Export's shape limits are checked before tracing: an imported embedder whose longest row
(visual tokens at the default image size + text) exceeds the sequence bound is refused in one
line with exit 2, naming the numbers and the flags to change -- not an internal error from the
tracer after minutes of work."""

from __future__ import annotations

import re

import pytest
from embedder_fixtures import build_qwen3_embedder_dir

from lame.cli.import_embedder import main as import_main
from lame_export.cli import main as export_main


@pytest.fixture(scope="module")
def imported_default_size(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    directory = build_qwen3_embedder_dir(root / "Qwen3-VL-Embedding-tiny")
    ckpt = root / "ckpt"
    args = ["embedder", str(directory), "--out", str(ckpt), "--recipe", "qwen3-vl-embedding"]
    assert import_main(args) == 0  # the default --image-size
    return ckpt


def test_default_image_size_is_refused_in_one_line_or_exported(imported_default_size, tmp_path, capsys):
    out = tmp_path / "artifact"
    code = export_main(["--ckpt", str(imported_default_size), "--out", str(out)])
    err = capsys.readouterr().err
    if code == 0:
        assert (out / "lame_artifact.json").is_file()
        return
    lines = [line for line in err.splitlines() if not line.startswith("[lame-export]")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("lame-export: error:"), err
    assert "internal error" not in err
    numbers = [int(n) for n in re.findall(r"\b(\d+) (?:visual tokens|tokens|text)", lines[0])]
    longest, visual = numbers[0], numbers[1]
    assert longest > 512 and visual < longest and "512" in lines[0]
    assert "--image-size" in lines[0] and f"--max-sequence {longest}" in lines[0]
    assert not out.exists()


def test_batch_bound_below_the_traced_batch_is_refused(imported_default_size, tmp_path, capsys):
    code = export_main(
        ["--ckpt", str(imported_default_size), "--out", str(tmp_path / "a"), "--max-batch", "2"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--max-batch" in err and "internal error" not in err
