"""scripts/docs/hooks.py: result tables rendered from the data files at build time, and the
build refused when a page and the data disagree (a marker without a file, a file no page uses)."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("mkdocs")
from mkdocs.exceptions import PluginError  # noqa: E402

from lame.evaluation.tables import write_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs" / "hooks.py")
hooks = importlib.util.module_from_spec(spec)
sys.modules["docs_hooks"] = hooks
spec.loader.exec_module(hooks)

PROV = {
    "command": "python bench.py --fast",
    "versions": "Python 3.11",
    "machine": "2 CPUs",
    "date": "2026-12-07",
}


def _docs(tmp_path, page_text, tables=("speed",)):
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "guide" / "page.md").write_text(page_text)
    for name in tables:
        write_table(
            docs / "results" / "data" / f"{name}.csv", ["precision", "emb/s"], [["fp32", "736"]], PROV
        )
    return {"docs_dir": str(docs)}


def test_a_marker_becomes_the_table_and_its_provenance(tmp_path):
    config = _docs(tmp_path, "Speed:\n\n  <!-- table: speed -->\n")
    page = SimpleNamespace(file=SimpleNamespace(src_uri="guide/page.md"))
    out = hooks.on_page_markdown((tmp_path / "docs/guide/page.md").read_text(), page, config, None)
    assert "  | precision | emb/s |" in out and "  | fp32 | 736 |" in out  # indentation kept
    assert "`python bench.py --fast`" in out and "2026-12-07" in out
    assert "<!--" not in out


def test_the_build_fails_on_a_marker_without_data_and_on_unused_data(tmp_path):
    with pytest.raises(PluginError, match="no results/data/missing.csv"):
        hooks.on_files([], _docs(tmp_path / "a", "<!-- table: missing -->\n"))
    with pytest.raises(PluginError, match="no page renders: results/data/unused.csv"):
        hooks.on_files([], _docs(tmp_path / "b", "<!-- table: speed -->\n", tables=("speed", "unused")))
