"""The module paths of the flat 0.1 layout (``lame_runtime.index``, ``lame.train``, ...),
kept importable for one release: each resolves, with a DeprecationWarning, to the very module
object at its new home, so ``isinstance`` checks and module state are shared, not copied.
No shim files: one finder per package, installed by its ``__init__.py``. Remove in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

MOVED = {  # old module under lame_runtime -> new home
    "artifact_files": "artifact.files",
    "paths": "artifact.paths",
    "persist": "artifact.persist",
    "preprocess": "inputs.preprocess",
    "images": "inputs.images",
    "text": "inputs.text",
    "instructions": "inputs.instructions",
    "pipeline": "inputs.pipeline",
    "routing": "inputs.routing",
    "backends": "engines.backends",
    "providers": "engines.providers",
    "tensorrt_backend": "engines.tensorrt.backend",
    "tensorrt_build": "engines.tensorrt.build",
    "tensorrt_meta": "engines.tensorrt.meta",
    "index": "retrieval.index",
    "index_io": "retrieval.index_io",
    "ann": "retrieval.ann",
    "qdrant_store": "retrieval.qdrant_store",
    "indexing": "retrieval.indexing",
    "triton": "deploy.triton",
    "triton_model": "deploy.triton_model",
    "tensorrt_cli": "cli.tensorrt",
    "clitools": "cli.tools",
}
# ``lame_runtime.artifact`` and ``lame_runtime.cli`` are packages now: their old public names
# are re-exported by the package itself (artifact) or were never public (cli's main/run, see
# the console scripts in pyproject.toml).


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.home = module.__spec__
        return module

    def exec_module(self, module):
        # Already executed at its new home; the import system has just stamped the alias's
        # spec on it, which would make reload() and pickling look for the old path.
        module.__spec__ = self.home


class _MovedFinder(importlib.abc.MetaPathFinder):
    def __init__(self, package: str, moved: dict[str, str]):
        self.package, self.moved = package, moved

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package != self.package or name not in self.moved:
            return None
        new = f"{package}.{self.moved[name]}"
        warnings.warn(
            f"{fullname} moved to {new}; the old path goes away in lame-embed 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install(package: str = "lame_runtime", moved: dict[str, str] = MOVED) -> None:
    """Alias ``package.OLD`` to ``package.NEW`` for each ``OLD: NEW`` of ``moved`` (once)."""
    if not any(isinstance(f, _MovedFinder) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder(package, moved))
