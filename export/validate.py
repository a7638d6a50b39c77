"""Parity checks: compare a candidate's embeddings with a reference's, row by row."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

Feed = dict[str, np.ndarray]

# Minimum row cosine to the PyTorch reference, per precision: the export's parity gates.
# int4 (weight-only, 4-bit blocks of 32): 16x int8's weight step, and no calibration to absorb
# it; 0.98 keeps the gate meaningful (a broken graph or a wrong block axis scores < 0.9) while
# letting honest RTN 4-bit noise through (see the "Edge memory" figures in docs/nvidia.md).
THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99, "int4": 0.98}


class ParityError(AssertionError):
    pass


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    return np.sum(ref * cand, axis=1)


def validate(
    reference: np.ndarray, candidate: np.ndarray, min_cosine: float, atol: float | None = None
) -> dict:
    """Raise :class:`ParityError` unless every row matches; return the figures either way."""
    if reference.shape != candidate.shape:
        raise ParityError(f"shape mismatch: reference {reference.shape} vs candidate {candidate.shape}")
    finite = bool(np.isfinite(candidate).all())
    cosines = row_cosines(reference, candidate) if finite else np.array([-1.0])
    figures: dict[str, Any] = {
        "min_cosine": float(cosines.min()),
        "finite": finite,
        "max_abs_diff": float(np.abs(reference - candidate).max()) if finite else None,
    }
    if not finite:
        raise ParityError("candidate produced NaN/Inf")
    if figures["min_cosine"] < min_cosine:
        raise ParityError(f"min cosine {figures['min_cosine']:.6f} < {min_cosine}")
    if atol is not None and figures["max_abs_diff"] > atol:
        raise ParityError(f"max abs diff {figures['max_abs_diff']:.2e} > {atol}")
    return figures


def parity_suite(
    reference: Callable[[Feed], np.ndarray],
    candidate: Callable[[Feed], np.ndarray],
    feeds: Sequence[tuple[str, Feed]],
    min_cosine: float,
    dims: Sequence[int] = (),
) -> dict:
    """Run every (label, feed); -> {"min_cosine", "finite", "passed", "cases": {label: cos}}.

    ``dims`` (a Matryoshka model's served sizes): each case is also scored on the leading d
    components, renormalised as the runtime serves them, and the gate takes the worst of all
    (``by_dimension`` has each size's minimum): a short prefix can drift more than the whole."""
    cases: dict[str, float | None] = {}
    finite = True
    by_dim: dict[str, float] = {}
    for label, feed in feeds:
        ref, cand = reference(feed), candidate(feed)
        if not np.isfinite(cand).all():
            finite = False
            cases[label] = None
            continue
        worst_case = float(row_cosines(ref, cand).min())
        for d in dims:
            prefix = float(row_cosines(ref[:, :d], cand[:, :d]).min())
            by_dim[str(d)] = round(min(by_dim.get(str(d), 1.0), prefix), 7)
            worst_case = min(worst_case, prefix)
        cases[label] = round(worst_case, 7)
    worst = min((c for c in cases.values() if c is not None), default=-1.0)
    result = {
        "min_cosine": worst,
        "finite": finite,
        "threshold": min_cosine,
        "passed": finite and worst >= min_cosine,
        "cases": cases,
    }
    if dims:
        result["by_dimension"] = by_dim
    return result
