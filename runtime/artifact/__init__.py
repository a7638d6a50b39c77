"""The artifact contract: the manifest and its files (contract, files), path containment
(paths) and the memory budget per precision (budget); atomic writes live in
``lame_runtime.persist``. Loads on ``lame_runtime.errors`` alone; the manifest's
engines and instructions sections are checked by their owners (engines, inputs), imported late.

``lame_runtime.artifact`` was a module before this package; its public names stay importable
from here (``from lame_runtime.artifact import Artifact, PRECISIONS``).
"""

from lame_runtime.artifact.contract import (  # noqa: F401
    FORMAT_VERSION,
    MANIFEST,
    PRECISIONS,
    Artifact,
    ArtifactError,
    TensorSpec,
)
