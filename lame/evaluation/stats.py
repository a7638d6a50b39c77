"""Seed statistics for quality tables: mean ± sd per row, and when a difference is noise.

One training run ranks nothing (the digits benchmark moves 1-3 points with the thread count
alone), so tables report the mean and sample standard deviation over seeds, and call a
difference "not significant" when it is smaller than twice its standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class SeedSummary:
    mean: float
    sd: float  # sample standard deviation (n - 1); 0.0 for a single seed
    n: int

    @property
    def standard_error(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n else math.nan

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.sd:.2f}" if self.n > 1 else f"{self.mean:.2f} (1 seed)"


def summarise(values: Sequence[float]) -> SeedSummary:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarise")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be finite, got {values}")
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return SeedSummary(mean, sd, n)


@dataclass(frozen=True)
class Difference:
    delta: float  # a.mean - b.mean
    standard_error: float  # sqrt(se_a^2 + se_b^2) (Welch)
    significant: bool  # |delta| >= 2 standard errors, and both sides have >= 2 seeds

    def __str__(self) -> str:
        verdict = "" if self.significant else " (not significant)"
        return f"{self.delta:+.2f} ± {self.standard_error:.2f}{verdict}"


def compare(a: SeedSummary, b: SeedSummary) -> Difference:
    """``a - b``; with fewer than 2 seeds on a side there is no error estimate: never
    significant."""
    delta = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Difference(delta, math.nan, False)
    error = math.sqrt(a.standard_error**2 + b.standard_error**2)
    significant = abs(delta) >= 2 * error if error > 0 else delta != 0
    return Difference(delta, error, significant)
