"""Layout: the four packages import, the runtime stays torch-free, the CLIs answer --help."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["lame", "lame_export", "lame_calibration", "lame_runtime"])
def test_package_imports(name):
    __import__(name)


def test_runtime_imports_neither_torch_nor_transformers():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "import lame_runtime, lame_calibration\n"
            "from lame_runtime import Preprocessor, ImageConfig, TextProcessor\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("module", ["lame.cli.train", "lame.cli.evaluate", "lame.cli.data"])
def test_cli_help(module, capsys):
    main = __import__(module, fromlist=["main"]).main
    assert main(["--help"]) == 0
    assert "--help" in capsys.readouterr().out


def test_console_scripts_installed():
    for script in ("lame-train", "lame-eval", "lame-data"):
        out = subprocess.run([script, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, (script, out.stderr)
        assert "Usage" in out.stdout
