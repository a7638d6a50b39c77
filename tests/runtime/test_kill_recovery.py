"""Kill tests: a real writer subprocess is SIGKILLed at random points, many times, and the last
complete version must always load. Index.save, artifact swap (persist.atomic_write_dir +
Artifact.open recovery) and ``lame-search index`` with ``--resume``.

Trial counts: LAME_KILL_TRIALS scales them (default 1.0; e.g. 0.25 for a quick local run).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lame_runtime import Index
from lame_runtime.persist import recover_dir, sha256

SCALE = float(os.environ.get("LAME_KILL_TRIALS", "1"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def trials(n: int) -> int:
    return max(2, int(n * SCALE))


def start_writer(script: str, *args: str) -> subprocess.Popen:
    """Start ``script``; returns once it printed "ready" (imports done)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read()[-2000:])
    return proc


def kill_after(proc: subprocess.Popen, delay: float) -> list[int]:
    """SIGKILL ``proc`` after ``delay`` seconds; the versions it reported complete."""
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    return [int(v) for v in out.split()]


# ------------------------------------------------------------------------- Index.save
INDEX_WRITER = """
    import sys
    import numpy as np
    from lame_runtime import Index

    def version(v):
        rng = np.random.default_rng(v)
        n = 6000 + 37 * v
        return rng.normal(size=(n, 64)).astype(np.float32), [f"v{v}.{i}" for i in range(n)]

    out, v = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    while True:
        v += 1
        vectors, ids = version(v)
        index = Index(64, storage="float16" if v % 2 else "float32", backend="numpy")
        index.add(vectors, ids, [{"v": v}] * len(ids))
        index.save(out, info={"version": v})
        print(v, flush=True)
"""


def _index_version(v: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(v)
    n = 6000 + 37 * v
    return rng.normal(size=(n, 64)).astype(np.float32), [f"v{v}.{i}" for i in range(n)]


def test_kill_during_index_save_keeps_last_complete_version(tmp_path):
    out = tmp_path / "idx"
    first, ids = _index_version(0)
    seed = Index(64, backend="numpy")
    seed.add(first, ids, [{"v": 0}] * len(ids))
    seed.save(out, info={"version": 0})
    rng, last, loaded_versions = random.Random(0), 0, []
    for trial in range(trials(40)):
        proc = start_writer(INDEX_WRITER, str(out), str(last))
        # every fifth trial waits for one complete save first, so the writer makes progress
        # however slow the machine; the others kill at a random instant
        done = [int(proc.stdout.readline())] if trial % 5 == 4 else []
        reported = done + kill_after(proc, rng.uniform(0.0, 0.6))
        index = Index.load(out)  # must always load
        v = index.info["version"]
        assert v >= (reported[-1] if reported else last), (trial, v, reported)
        vectors, ids = _index_version(v)
        assert index.ids == ids and index.payload(ids[-1]) == {"v": v}
        want = Index(64, storage=index.storage, backend="numpy")
        want.add(vectors, ids)
        assert np.array_equal(index.vectors(), want.vectors())
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        loaded_versions.append(v)
        last = v
        for name in leftovers:  # a killed temp file is harmless; the next save ignores it
            (tmp_path / name).unlink()
    print(f"index save: {len(loaded_versions)} kills, versions loaded {loaded_versions}")
    assert len(set(loaded_versions)) > 1  # the writer did make progress between kills


# ------------------------------------------------------------------------- artifact swap
SWAP_WRITER = """
    import json, os, shutil, sys
    from pathlib import Path
    from lame_runtime.persist import atomic_write_dir, sha256

    final, source, v = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    MARKER = "lame_artifact.json" if source else "manifest.json"

    def write(stage, v):
        if source:  # a real artifact, plus large extra files so a swap takes a while
            for item in Path(source).iterdir():
                if item.is_file():
                    shutil.copy2(item, stage / item.name)
        files = {}
        for k in range(3):
            name = f"blob{k}.bin"
            (stage / name).write_bytes(bytes([(v + k) % 256]) * (4 << 20))
            files[name] = sha256(stage / name)
        (stage / "version.json").write_text(json.dumps({"version": v, "files": files}))
        if not source:
            (stage / MARKER).write_text(json.dumps({"version": v}))

    print("ready", flush=True)
    while True:
        v += 1
        atomic_write_dir(final, lambda stage: write(stage, v), MARKER)
        print(v, flush=True)
"""


def _check_version_folder(folder: Path) -> int:
    info = json.loads((folder / "version.json").read_text())
    for name, digest in info["files"].items():
        assert sha256(folder / name) == digest, f"{folder / name} is torn"
    return info["version"]


@pytest.mark.parametrize("real", [False, True], ids=["synthetic", "artifact"])
def test_kill_during_artifact_swap_recovers_last_complete(tmp_path, artifact_dir, real):
    from lame_runtime.artifact.contract import Artifact

    final = tmp_path / "model"
    source = str(artifact_dir) if real else ""
    proc = start_writer(SWAP_WRITER, str(final), source, "0")  # version 1 completes first
    assert proc.stdout.readline().strip() == "1", proc.stderr.read()[-2000:]
    kill_after(proc, 0.0)
    rng, last, seen, swaps_hit = random.Random(1), 1, [], 0
    for trial in range(trials(30 if not real else 10)):
        proc = start_writer(SWAP_WRITER, str(final), source, str(last))
        reported = kill_after(proc, rng.uniform(0.0, 0.5))
        if not final.exists():
            swaps_hit += 1  # killed between the two renames: only .model.old is there
        if real:
            artifact = Artifact.open(final)  # recovers the previous complete artifact
            artifact.file_for("fp32")  # and its graph verifies
            folder = artifact.path
        else:
            folder = recover_dir(final)
        assert folder is not None and folder == final
        v = _check_version_folder(folder)
        assert v >= (reported[-1] if reported else last), (trial, v, reported)
        seen.append(v)
        last = v
    print(
        f"artifact swap ({'real' if real else 'synthetic'}): {len(seen)} kills, "
        f"{swaps_hit} between the renames, versions {seen}"
    )


# ------------------------------------------------------------------------- lame-search --resume
@pytest.fixture(scope="module")
def many_images(digits_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill") / "images"
    folder.mkdir()
    for i, src in enumerate(sorted((digits_dir / "images").glob("*.png"))[:120]):
        shutil.copy(src, folder / f"{i:03d}.png")
    (folder / "013x.png").write_text("not an image")  # exercised by --skip-bad on resume too
    return folder


def test_kill_during_indexing_then_resume_equals_uninterrupted(artifact_dir, many_images, tmp_path):
    from lame_runtime.cli.search import main
    from lame_runtime.retrieval.indexing import BUILD_KEY, report_path

    args = [
        "--model",
        str(artifact_dir),
        "--images",
        str(many_images),
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--skip-bad",
        "--no-progress",
    ]
    command = [sys.executable, "-m", "lame_runtime.cli.search", "index"]
    began = time.monotonic()
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "full"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    duration = time.monotonic() - began
    assert done.returncode == 0, done.stderr[-2000:]
    full = Index.load(tmp_path / "full")
    rng, partial_kills, states = random.Random(2), 0, []
    for trial in range(trials(15)):
        out = tmp_path / f"t{trial}"
        proc = subprocess.Popen(
            [*command, "--out", str(out), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
        )
        if trial % 5 == 4:  # sometimes before the first checkpoint (startup, first batches)
            time.sleep(rng.uniform(0.0, 0.6) * duration)
        else:  # mostly while checkpoints are being written: from the first one on
            deadline = time.monotonic() + duration
            while not Path(f"{out}.json").exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            # a share of the uninterrupted run, not fixed seconds, so the kill lands between
            # checkpoints on a fast machine as on a slow one
            time.sleep(rng.uniform(0.0, 0.5) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        state = Index.load(out).info[BUILD_KEY] if Path(f"{out}.json").exists() else None
        states.append(None if state is None else state["next"])
        if state is not None and not state["complete"]:
            partial_kills += 1
        assert main(["index", "--out", str(out), "--resume", *args]) == 0
        resumed = Index.load(out)
        assert resumed.ids == full.ids, trial
        assert np.array_equal(resumed.vectors(), full.vectors()), trial
        assert report_path(out).read_text() == report_path(tmp_path / "full").read_text()
    print(
        f"indexing --resume: {len(states)} kills, {partial_kills} mid-run (checkpoint "
        f"positions {states}); uninterrupted run {duration:.1f}s"
    )
    assert partial_kills >= 1  # at least one kill landed between checkpoints
