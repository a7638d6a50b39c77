"""The README's quick start, run as written (scripts/docs/quickstart.py: its bash block line by
line, then its Python block, in an empty folder), and the README's tables of figures, which
must be the ones generated from the docs' data files (scripts/docs/readme_tables.py)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


quickstart = _script("quickstart")
readme_tables = _script("readme_tables")


def test_readme_quickstart_runs_as_written(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    commands, python = quickstart.blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert [c.split()[0] for c in commands] == [
        "lame-data",
        "lame-train",
        "lame-export",
        "lame-search",
        "lame-search",
    ]
    steps = quickstart.run(tmp_path, commands, python)
    assert (tmp_path / "quick" / "onnx" / "lame_artifact.json").is_file()
    query_out = steps[-2][2]
    assert query_out.strip(), "lame-search query printed no hits"
    snippet_out = steps[-1][2]
    assert snippet_out.startswith("(1, "), snippet_out  # query.shape: one vector
    assert "eval_" in snippet_out  # the ids of the three nearest images


def test_readme_tables_are_generated_from_the_data_files():
    assert readme_tables.main(["--check"]) == 0


def test_every_docs_data_file_carries_its_provenance():
    from lame.evaluation.tables import PROVENANCE, read_table

    files = sorted((ROOT / "docs" / "results" / "data").glob("*.csv"))
    assert files
    for path in files:
        columns, rows = read_table(path)  # raises on a missing or empty provenance field
        assert columns and rows, path.name
        assert all(row[k].strip() for row in rows for k in PROVENANCE), path.name
