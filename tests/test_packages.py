"""Layout: the four packages import, the runtime stays torch-free, the CLIs answer --help
(without importing torch) and --version (the installed distribution's)."""

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
# The console scripts of lame/ and lame-search (lame-export and lame-serve are checked by
# their own packages' tests).
FRONT_DOORS = ("lame-train", "lame-eval", "lame-data", "lame-bench", "lame-import", "lame-search")


@pytest.mark.parametrize("name", ["lame", "lame_export", "lame_calibration", "lame_runtime"])
def test_package_imports(name):
    __import__(name)


def _prints_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter (clean import state) and expect it to print ok."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_runtime_imports_neither_torch_nor_transformers():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import lame_runtime, lame_calibration\n"
        "from lame_runtime.inputs.preprocess import Preprocessor\n"
        "print('ok')"
    )
    _prints_ok(code)


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


def test_every_console_script_answers_help():
    # every script pyproject.toml declares, so a moved entry point cannot go unnoticed
    assert {"lame-search", "lame-export", "lame-bench"} <= set(SCRIPTS)
    for script in SCRIPTS:
        out = subprocess.run([script, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, (script, out.stderr)
        assert "Usage" in out.stdout or "usage" in out.stdout, script


# In a fresh interpreter: the script's entry point (module:function) answers --help, and so does
# each sub-command of a group; then which of torch / transformers got imported.
_HELP_PROBE = """
import click, importlib, json, sys, contextlib, io
module_name, _ = sys.argv[1].split(":")
module = importlib.import_module(module_name)
calls = [["--help"]]
if isinstance(module.command, click.Group):
    calls += [[name, "--help"] for name in module.command.commands]
codes = {}
for argv in calls:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        codes[" ".join(argv)] = module.main(argv)
    assert "Usage" in out.getvalue(), argv
heavy = [name for name in ("torch", "transformers") if name in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


@pytest.mark.parametrize("script", FRONT_DOORS)
def test_help_imports_neither_torch_nor_transformers(script):
    """--help must be instant: torch and transformers load in the command bodies, not for help."""
    out = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE, SCRIPTS[script]], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["codes"].values()) == {0}, result
    assert result["heavy"] == [], f"{script} --help imported {result['heavy']}"


@pytest.mark.parametrize("script", FRONT_DOORS)
def test_version_is_the_installed_distributions(script):
    installed = version("lame-embed")
    assert installed == PYPROJECT["project"]["version"], (
        f"the installed metadata says {installed}, pyproject.toml {PYPROJECT['project']['version']}: "
        "reinstall (pip install -e .)"
    )
    out = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{script}, version {installed}"


@pytest.mark.parametrize(
    "module, argv",
    [
        ("lame.cli.train", ["--data", "data", "--out", "run"]),
        ("lame.cli.evaluate", ["--ckpt", "run", "--data", "data"]),
        ("lame.cli.bench", ["--preset", "tiny"]),
        ("lame.cli.import_embedder", ["embedder", "hf", "--out", "ckpt", "--recipe", "qwen3-vl-embedding"]),
    ],
)
def test_a_torch_command_on_the_base_install_names_the_extra(module, argv, tmp_path):
    """The CLIs import without torch (for --help), so running one there must say what to
    install in one line, not end in an internal error."""
    code = (
        "import sys, contextlib, io\n"
        "sys.modules['torch'] = None; sys.modules['transformers'] = None  # as if not installed\n"
        f"from {module} import main\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        f"    code = main({argv!r})\n"
        "print(code, err.getvalue(), end='')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    exit_code, message = out.stdout.split(" ", 1)
    assert exit_code == "2" and message.count("\n") == 1, out.stdout
    assert 'needs the train extra (torch, transformers): pip install "lame-embed[train]"' in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_lame_version_is_the_installed_distributions():
    import lame

    assert lame.__version__ == version("lame-embed") == PYPROJECT["project"]["version"]


RUNTIME = Path(__file__).parents[1] / "runtime"


def _runtime_imports(folder: str, deferred: bool = True) -> set[str]:
    """The lame_runtime modules that the files under runtime/FOLDER import (with ``deferred``,
    also the imports inside functions)."""
    import ast

    found = set()
    for path in (RUNTIME / folder).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if deferred else tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("lame_runtime.")}


def test_lame_layout_rooms():
    lame = RUNTIME.parent / "lame"
    assert len(list(lame.glob("*.py"))) <= 10
    for package in ["training", "evaluation"]:
        doc = __import__("ast").get_docstring(
            __import__("ast").parse((lame / package / "__init__.py").read_text())
        )
        assert doc and len(doc.strip().splitlines()) >= 2


def test_runtime_layout_rooms():
    top = sorted(p.name for p in RUNTIME.glob("*.py"))
    assert len(top) <= 8, top
    packages = sorted(p.parent for p in RUNTIME.rglob("__init__.py") if p.parent != RUNTIME)
    assert {p.name for p in packages} >= {
        "artifact",
        "inputs",
        "engines",
        "retrieval",
        "deploy",
        "cli",
        "tensorrt",
    }
    for package in packages:
        doc = __import__("ast").get_docstring(__import__("ast").parse((package / "__init__.py").read_text()))
        assert doc and len(doc.strip().splitlines()) >= 2, f"{package}: say what lives here"
    # engines and retrieval never import each other; artifact loads on errors alone (the
    # manifest's engines and instructions sections are checked by their owners, imported late)
    # and persist (atomic writes, hashing), which depends on errors alone
    assert not {m for m in _runtime_imports("engines") if m.startswith("lame_runtime.retrieval")}
    assert not {m for m in _runtime_imports("retrieval") if m.startswith("lame_runtime.engines")}
    assert {
        m for m in _runtime_imports("artifact", deferred=False) if not m.startswith("lame_runtime.artifact")
    } <= {"lame_runtime.errors", "lame_runtime.persist"}


def test_public_names_and_no_old_module_paths():
    code = (
        "import importlib\n"
        "from lame_runtime import Embedder, Index, AnnIndex, QdrantStore, Artifact\n"
        "from lame_runtime.artifact import Artifact as A2, PRECISIONS\n"
        "assert A2 is Artifact\n"
        "for old in ('lame_runtime.index', 'lame_runtime.ann', 'lame.train', 'lame_runtime.no_such_module'):\n"
        "    try:\n"
        "        importlib.import_module(old)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise AssertionError(old + ' still imports')\n"
        "print('ok')\n"
    )
    _prints_ok(code)


def test_runtime_and_lame_serve_help_without_the_serve_extra():
    # the base install (a Jetson's) has no starlette/uvicorn/prometheus-client: the runtime
    # imports, lame-serve answers --help, and serving says which extra to install
    code = (
        "import sys, contextlib, io\n"
        "for name in ('starlette', 'uvicorn', 'prometheus_client'):\n"
        "    sys.modules[name] = None\n"
        "import lame_runtime\n"
        "from lame_runtime.serve.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        "    assert main(['--model', '.']) == 1\n"
        "assert 'lame-embed[serve]' in err.getvalue(), err.getvalue()\n"
        "print('ok')"
    )
    _prints_ok(code)
