"""lame_runtime's public surface: what an application imports (``__all__``), the version from
the installed metadata, and the PEP 561 markers shipped with every typed package."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from pathlib import Path

import pytest

import lame_runtime

pytestmark = pytest.mark.runtime
ROOT = Path(__file__).resolve().parents[2]


def test_all_is_what_an_application_uses():
    expected = {"Embedder", "RuntimeOptions", "Encoder", "Index", "AnnIndex", "QdrantStore", "Artifact"}
    assert expected <= set(lame_runtime.__all__)
    for name in lame_runtime.__all__:
        assert getattr(lame_runtime, name) is not None, name
    errors = {n for n in lame_runtime.__all__ if n.endswith("Error")}
    assert {"LameError", "InputError", "ArtifactError", "BackendError"} <= errors
    for helper in ("load_image", "preprocess_images", "format_query", "SPECIAL_TOKENS", "TextProcessor"):
        assert helper not in lame_runtime.__all__ and not hasattr(lame_runtime, helper), helper
    # ... and still importable from their modules
    from lame_runtime.inputs.images import ImageConfig, load_image  # noqa: F401
    from lame_runtime.inputs.preprocess import Preprocessor, format_query  # noqa: F401
    from lame_runtime.inputs.text import SPECIAL_TOKENS, TextProcessor  # noqa: F401


def test_version_comes_from_the_package_metadata():
    assert lame_runtime.__version__ == importlib.metadata.version("lame-embed")


def test_version_without_metadata_is_a_marker(monkeypatch):
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    saved = {k: v for k, v in sys.modules.items() if k == "lame_runtime"}
    try:
        del sys.modules["lame_runtime"]
        fresh = importlib.import_module("lame_runtime")
        assert fresh.__version__ == "0+unknown"
    finally:
        sys.modules.update(saved)


@pytest.mark.parametrize(
    "folder, package",
    [("runtime", "lame_runtime"), ("export", "lame_export"), ("calibration", "lame_calibration")],
)
def test_typed_marker_is_shipped(folder, package):
    assert (ROOT / folder / "py.typed").is_file()
    # pyproject's [tool.setuptools.package-data] (read as text: tomllib is Python 3.11+)
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    line = next(row for row in section.splitlines() if row.startswith(f'"{package}"'))
    assert '"py.typed"' in line
