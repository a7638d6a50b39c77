"""Digit-sequence statements: the texts of the digits benchmark, each a checkable predicate.

``Statement(family, values)`` has ``text`` and ``holds(digits)``, so the truth of any statement
on any image can be verified (the builder uses it to guarantee eval negatives are false).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cache
from typing import Callable, Sequence

import numpy as np

Digits = tuple[int, ...]

TIER_FAMILIES = {1: ("read", "sum", "max"), 2: ("oddsum", "range", "countgt", "order")}
FAMILY_TIER = {family: tier for tier, families in TIER_FAMILIES.items() for family in families}
DIRECTIONS = ("i2t", "t2i")
TASKS = tuple(f"tier{FAMILY_TIER[f]}.{f}.{d}" for f in FAMILY_TIER for d in DIRECTIONS)
INSTRUCTIONS = {
    "t2i": "Find the image that matches the statement.",
    "i2t": "Find the statement that is true for the image.",
}


@dataclass(frozen=True)
class Statement:
    """A predicate over a left-to-right digit sequence: a family and its numbers.

    e.g. ``Statement("oddsum", (9,))`` is "the odd digits add up to 9";
    ``Statement("order", (1, 14))`` is "... increasing order and add up to 14"
    (1 = increasing, 0 = decreasing); ``countgt`` values are (count, threshold).
    """

    family: str
    values: tuple[int, ...]

    @property
    def text(self) -> str:
        return _FAMILIES[self.family].text(*self.values)

    def holds(self, digits: Sequence[int]) -> bool:
        return _FAMILIES[self.family].holds(tuple(digits), *self.values)


@dataclass(frozen=True)
class _Family:
    pattern: str  # regex capturing ``values`` from ``text``, for parse_statement
    text: Callable[..., str]
    holds: Callable[..., bool]  # (digits, *values) -> truth
    measure: Callable[[Digits, int], tuple[int, ...] | None]  # (digits, threshold) -> true values
    ranges: tuple[Sequence[int], ...]  # every value a statement can take, per position


def _is_sorted(digits: Sequence[int], increasing: int) -> bool:
    return all(a < b if increasing else a > b for a, b in zip(digits, digits[1:]))


def _order_measure(digits: Digits, _: int) -> tuple[int, int] | None:
    for increasing in (1, 0):
        if _is_sorted(digits, increasing):
            return increasing, sum(digits)
    return None


def _odd_sum(digits: Sequence[int]) -> int:
    return sum(d for d in digits if d % 2)


_FAMILIES = {
    "read": _Family(
        r"the digits are (\d) and (\d)",
        lambda a, b: f"the digits are {a} and {b}",
        lambda d, a, b: d == (a, b),
        lambda d, _: d,
        (range(10), range(10)),
    ),
    "sum": _Family(
        r"the digits add up to (\d+)",
        lambda t: f"the digits add up to {t}",
        lambda d, t: sum(d) == t,
        lambda d, _: (sum(d),),
        (range(19),),
    ),
    "max": _Family(
        r"the largest digit is (\d)",
        lambda v: f"the largest digit is {v}",
        lambda d, v: max(d) == v,
        lambda d, _: (max(d),),
        (range(10),),
    ),
    "oddsum": _Family(
        r"the odd digits add up to (\d+)",
        lambda t: f"the odd digits add up to {t}",
        lambda d, t: _odd_sum(d) == t,
        lambda d, _: (_odd_sum(d),),
        (range(37),),
    ),
    "range": _Family(
        r"the largest minus the smallest is (\d)",
        lambda r: f"the largest minus the smallest is {r}",
        lambda d, r: max(d) - min(d) == r,
        lambda d, _: (max(d) - min(d),),
        (range(10),),
    ),
    "countgt": _Family(
        r"exactly (\d) (?:digit is|digits are) greater than (\d)",
        lambda k, t: f"exactly {k} {'digit is' if k == 1 else 'digits are'} greater than {t}",
        lambda d, k, t: sum(x > t for x in d) == k,
        lambda d, t: (sum(x > t for x in d), t),
        (range(5), range(2, 8)),
    ),
    # 3..30 spans every sum of 3-4 strictly sorted distinct digits.
    "order": _Family(
        r"the digits are in (in|de)creasing order and add up to (\d+)",
        lambda up, t: f"the digits are in {'in' if up else 'de'}creasing order and add up to {t}",
        lambda d, up, t: _is_sorted(d, up) and sum(d) == t,
        _order_measure,
        ((1, 0), range(3, 31)),
    ),
}


def parse_statement(text: str) -> Statement:
    """Inverse of ``Statement.text``; raises ValueError for unknown wording."""
    for family, spec in _FAMILIES.items():
        match = re.fullmatch(spec.pattern, text)
        if match:
            direction = {"in": 1, "de": 0}  # order's (in|de)creasing group
            return Statement(
                family, tuple(direction[g] if g in direction else int(g) for g in match.groups())
            )
    raise ValueError(f"not a digits statement: {text!r}")


@cache
def family_statements(family: str) -> tuple[Statement, ...]:
    """Every statement of a family over the value range its images can reach."""
    return tuple(Statement(family, values) for values in itertools.product(*_FAMILIES[family].ranges))


def true_statement(family: str, digits: Sequence[int], rng: np.random.Generator) -> Statement | None:
    """A statement of ``family`` that holds for ``digits`` (None if the family can't)."""
    threshold = int(rng.integers(2, 8)) if family == "countgt" else 0
    values = _FAMILIES[family].measure(tuple(digits), threshold)
    return None if values is None else Statement(family, tuple(values))


def statement_distance(a: Statement, b: Statement) -> int:
    """How far apart two same-family statements are; 1 = a near miss."""
    if a.family == "read":
        if sorted(a.values) == sorted(b.values):
            return 1  # same digits swapped: as hard as one digit changed
        return sum(x != y for x, y in zip(a.values, b.values))
    return sum(abs(x - y) for x, y in zip(a.values, b.values))


def rationale(digits: Sequence[int], statement: Statement) -> str:
    """A short space-separated chain of thought deriving ``statement`` from ``digits``."""
    family, values = statement.family, statement.values
    steps = [f"digits {_spaced(digits)}"]
    if family == "sum":
        steps.append(_addition(digits))
    elif family == "max":
        steps.append(f"largest {max(digits)}")
    elif family == "oddsum":
        odd = [d for d in digits if d % 2]
        steps += [f"odd digits {_spaced(odd)}", _addition(odd)] if odd else ["odd digits none", "sum 0"]
    elif family == "range":
        high, low = max(digits), min(digits)
        steps += [f"largest {high}", f"smallest {low}", f"{high} - {low} = {high - low}"]
    elif family == "countgt":
        above = [d for d in digits if d > values[1]]
        steps += [f"greater than {values[1]} : {_spaced(above) or 'none'}", f"count {len(above)}"]
    elif family == "order":
        sign, way = ("<", "increasing") if values[0] else (">", "decreasing")
        steps += [f" {sign} ".join(map(str, digits)) + f" {way}", _addition(digits)]
    return " . ".join(steps)


def _spaced(numbers: Sequence[int]) -> str:
    return " ".join(map(str, numbers))


def _addition(numbers: Sequence[int]) -> str:
    return " + ".join(map(str, numbers)) + f" = {sum(numbers)}"
