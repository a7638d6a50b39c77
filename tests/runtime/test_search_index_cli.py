"""lame-search index --skip-bad / --resume / checkpoints, and one-line errors with --debug."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import numpy as np
import pytest

from lame_runtime import Index
from lame_runtime.cli.search import main
from lame_runtime.cli.tools import invoke
from lame_runtime.errors import InputError
from lame_runtime.retrieval.indexing import BUILD_KEY, report_path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small_images(digits_dir, tmp_path_factory) -> Path:
    """20 real digit images plus 3 bad ones (truncated, not an image, empty) at fixed places."""
    folder = tmp_path_factory.mktemp("imgs") / "mixed"
    folder.mkdir()
    sources = sorted((digits_dir / "images").glob("*.png"))[:20]
    for i, src in enumerate(sources):
        shutil.copy(src, folder / f"img{i:02d}.png")
    data = sources[0].read_bytes()
    (folder / "img05b.png").write_bytes(data[: len(data) // 3])
    (folder / "img11b.png").write_text("not an image")
    (folder / "img17b.png").write_bytes(b"")
    return folder


def test_corrupt_image_is_one_line_without_skip_bad(artifact_dir, small_images, tmp_path, capsys):
    code, out, err = run_cli(
        capsys,
        "index",
        "--model",
        artifact_dir,
        "--images",
        small_images,
        "--out",
        tmp_path / "idx",
        "--no-progress",
        "--batch-size",
        "4",
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lame-search: error: images[")
    assert "img05b.png" in err and "--skip-bad" in err and "Traceback" not in err


def test_skip_bad_reports_and_matches_a_clean_run(artifact_dir, small_images, tmp_path, capsys):
    code, out, err = run_cli(
        capsys,
        "index",
        "--model",
        artifact_dir,
        "--images",
        small_images,
        "--out",
        tmp_path / "idx",
        "--no-progress",
        "--batch-size",
        "4",
        "--skip-bad",
        "--checkpoint-every",
        "4",
    )
    assert code == 0, err
    summary = json.loads(out)
    report = [json.loads(line) for line in report_path(tmp_path / "idx").read_text().splitlines()]
    assert [r["id"] for r in report] == ["img05b.png", "img11b.png", "img17b.png"]
    assert summary["skipped"] == 3 and summary["report"] == str(report_path(tmp_path / "idx"))
    assert all(r["image"].endswith(r["id"]) and r["error"] for r in report)
    assert "cannot read image" in report[0]["error"]
    index = Index.load(tmp_path / "idx")
    assert index.ids == [f"img{i:02d}.png" for i in range(20)]
    assert index.info[BUILD_KEY]["complete"] is True and index.info[BUILD_KEY]["skipped"] == 3
    # The good images' vectors equal those of an index built from the good images alone.
    clean = tmp_path / "clean_imgs"
    clean.mkdir()
    for name in index.ids:
        shutil.copy(small_images / name, clean / name)
    code, _, err = run_cli(
        capsys,
        "index",
        "--model",
        artifact_dir,
        "--images",
        clean,
        "--out",
        tmp_path / "clean",
        "--no-progress",
        "--batch-size",
        "4",
    )
    assert code == 0, err
    np.testing.assert_allclose(Index.load(tmp_path / "clean").vectors(), index.vectors(), atol=1e-5)


def test_resume_after_a_crash_equals_an_uninterrupted_run(
    artifact_dir, small_images, tmp_path, capsys, monkeypatch
):
    common = [
        "--model",
        artifact_dir,
        "--images",
        small_images,
        "--no-progress",
        "--batch-size",
        "4",
        "--skip-bad",
        "--checkpoint-every",
        "4",
    ]
    code, _, err = run_cli(capsys, "index", "--out", tmp_path / "full", *common)
    assert code == 0, err
    full = Index.load(tmp_path / "full")

    # Crash (an exception out of the embedder) on the 4th batch: checkpoints survive.
    import lame_runtime.retrieval.indexing as indexing

    calls = {"n": 0}
    real = indexing._embed

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(indexing, "_embed", crashing)
    code, _, err = run_cli(capsys, "index", "--out", tmp_path / "part", *common)
    assert code == 1 and "internal error: RuntimeError: simulated crash" in err
    partial = Index.load(tmp_path / "part")
    assert partial.info[BUILD_KEY]["next"] == 12 and not partial.info[BUILD_KEY]["complete"]
    monkeypatch.setattr(indexing, "_embed", real)

    code, _, err = run_cli(capsys, "index", "--out", tmp_path / "part", *common)
    assert code == 2 and "--resume" in err  # never silently overwritten
    code, out, err = run_cli(capsys, "index", "--out", tmp_path / "part", "--resume", *common)
    assert code == 0, err
    resumed = Index.load(tmp_path / "part")
    assert resumed.ids == full.ids
    assert np.array_equal(resumed.vectors(), full.vectors())
    assert report_path(tmp_path / "part").read_text() == report_path(tmp_path / "full").read_text()
    # Resuming with other settings is refused, naming the setting.
    code, _, err = run_cli(
        capsys,
        "index",
        "--out",
        tmp_path / "part",
        "--resume",
        *common[:5],
        "--batch-size",
        "8",
        "--skip-bad",
    )
    assert code == 2 and "batch_size was 4" in err


def test_debug_flag_and_env_show_the_traceback(capsys, monkeypatch):
    @click.command()
    def broken():
        raise InputError("the input is bad")

    @click.command()
    def buggy():
        raise ZeroDivisionError("oops")

    assert invoke(broken, [], "prog") == 2
    err = capsys.readouterr().err
    assert err == "prog: error: the input is bad\n"
    assert invoke(buggy, [], "prog") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: ZeroDivisionError: oops" in err
    assert "--debug" in err and "Traceback" not in err
    assert invoke(broken, ["--debug"], "prog") == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("prog: error: the input is bad\n")
    monkeypatch.setenv("LAME_DEBUG", "1")
    assert invoke(buggy, [], "prog") == 1
    assert "Traceback" in capsys.readouterr().err


def test_checkpoint_interval_grows_with_the_index():
    """Each checkpoint rewrites the whole index: with a fixed interval the bytes written grow
    with the square of the collection; the growing interval keeps them linear."""
    from lame_runtime.retrieval.indexing import BuildOptions, checkpoint_due

    options = BuildOptions(batch_size=64, checkpoint_every=1024, checkpoint_growth=0.1)
    done = since = written = saves = 0
    while done < 1_000_000:
        done += 64
        since += 64
        if checkpoint_due(since, done, options):
            written += done
            saves += 1
            since = 0
    assert checkpoint_due(1024, 0, options) and not checkpoint_due(1023, 0, options)
    assert not checkpoint_due(50_000, 1_000_000, options) and checkpoint_due(100_000, 10**6, options)
    assert written <= (1 + 1 / 0.1) * done * 1.05  # linear in the final size
    assert 20 < saves < 200  # a fixed 1,024 would be 976 saves
