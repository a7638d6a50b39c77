"""Fixtures shared by the tests that the minimum-versions job runs with ``--noconftest`` (no
torch there): the artifact comes from ``$LAME_TEST_ARTIFACT`` or, where torch exists, from
conftest's ``artifact_dir``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def runtime_artifact(request) -> Path:
    """A real exported tiny artifact: $LAME_TEST_ARTIFACT (the torch-free min-versions job
    exports one first), else the suite's own export (needs torch)."""
    if os.environ.get("LAME_TEST_ARTIFACT"):
        return Path(os.environ["LAME_TEST_ARTIFACT"])
    pytest.importorskip("torch", reason="no $LAME_TEST_ARTIFACT and no torch to export one")
    return request.getfixturevalue("artifact_dir")
