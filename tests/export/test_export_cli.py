"""lame-export --help and --version are torch-free (the exporter is imported when the command
runs), and --version names the installed lame-embed."""

from __future__ import annotations

import subprocess
import sys

import lame_runtime

PROBE = (
    "import sys\n"
    "from lame_export.cli import main\n"
    "code = main([{arg!r}])\n"
    "heavy = sorted(m for m in ('torch', 'onnx', 'transformers', 'lame_export.pipeline') if m in sys.modules)\n"
    "print('CODE', code, 'HEAVY', heavy)\n"
)


def _run(arg: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(arg=arg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_help_imports_no_torch():
    stdout = _run("--help")
    assert "--max-sequence" in stdout and "--version" in stdout
    assert stdout.strip().splitlines()[-1] == "CODE 0 HEAVY []"


def test_version_is_the_package_version():
    stdout = _run("--version")
    assert f"lame-export, version {lame_runtime.__version__}" in stdout
    assert stdout.strip().splitlines()[-1] == "CODE 0 HEAVY []"
