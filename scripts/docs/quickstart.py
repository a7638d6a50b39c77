"""The README's quick start, run as written: its first ``bash`` block line by line, then its
first ``python`` block in a fresh interpreter, in an empty folder, each step timed.

    python scripts/docs/quickstart.py [--work DIR] [--data-out docs/results/data]

``--data-out`` writes ``quickstart.csv`` (step, seconds; ``lame.evaluation.tables``), the
figures the README's quick-start table and the docs render. ``tests/test_quickstart.py`` runs
the same blocks through :func:`run`, so a README snippet that breaks fails the tests.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Quick start"


def blocks(readme: str) -> tuple[list[str], str]:
    """(the bash block's commands, continuation lines joined; the python block) of the quick
    start section."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start : end if end != -1 else len(readme)]
    bash = re.search(r"```bash\n(.*?)```", section, re.S)
    python = re.search(r"```python\n(.*?)```", section, re.S)
    if not bash or not python:
        raise ValueError(f"{SECTION} needs a ```bash and a ```python block")
    commands = []
    for line in bash.group(1).replace("\\\n", " ").splitlines():
        command = line.split("  #")[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands, python.group(1)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    work: Path, commands: list[str], python: str, timeout: float = 600
) -> list[tuple[str, float, str, float]]:
    """Run the blocks in ``work``; -> [(step, wall seconds, stdout, CPU seconds)]. A failing
    step raises ``CalledProcessError`` with its output. CPU seconds (user + system of the
    step's processes) say what a step costs when the machine's other load inflates wall time."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    times = []
    steps = [(c, ["bash", "-e", "-o", "pipefail", "-c", c]) for c in commands]
    steps.append(("the Python snippet", [sys.executable, "-c", python]))
    for name, argv in steps:
        began, cpu = time.perf_counter(), _cpu()
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, name, done.stdout, done.stderr)
        seconds, cpu = time.perf_counter() - began, _cpu() - cpu
        times.append((name, seconds, done.stdout, cpu))
        print(f"{seconds:6.1f} s ({cpu:5.1f} s CPU)  {name}", file=sys.stderr)
    return times


def step_label(command: str) -> str:
    """``lame-search index --model ...`` -> ``lame-search index``: the command and its subcommand."""
    words = [w for w in command.split()[:2] if not w.startswith("-") and "/" not in w]
    return f"`{' '.join(words)}`" if command.startswith("lame") else command


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder to run in (default: a new temporary one)")
    parser.add_argument("--data-out", type=Path, help="write DIR/quickstart.csv")
    args = parser.parse_args(argv)
    commands, python = blocks(README.read_text(encoding="utf-8"))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        times = run(work, commands, python)
    total, total_cpu = sum(t[1] for t in times), sum(t[3] for t in times)
    print(f"{total:6.1f} s ({total_cpu:5.1f} s CPU)  in all", file=sys.stderr)
    if args.data_out:
        from lame.evaluation.tables import provenance, write_table

        rows = [[step_label(name), f"{s:.1f}", f"{cpu:.1f}"] for name, s, _, cpu in times]
        rows.append(["in all", f"{total:.1f}", f"{total_cpu:.1f}"])
        command = "python scripts/docs/quickstart.py --data-out docs/results/data"
        prov = provenance(command)
        # The machine is shared: say how busy it was (1-minute load average, before and after).
        prov["machine"] += f"; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
        path = write_table(args.data_out / "quickstart.csv", ["step", "wall s", "CPU s"], rows, prov)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
