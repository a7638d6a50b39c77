"""Layout: the four packages import, the runtime stays torch-free, the CLIs answer --help."""

import subprocess
import sys

import pytest


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
    from pathlib import Path

    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"lame-search", "lame-export", "lame-bench"} <= set(scripts)
    for script in scripts:
        out = subprocess.run([script, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, (script, out.stderr)
        assert "Usage" in out.stdout or "usage" in out.stdout, script


RUNTIME = __import__("pathlib").Path(__file__).parents[1] / "runtime"


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
