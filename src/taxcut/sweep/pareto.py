"""Pure functions on measured candidates: the tax, the Pareto front, and selection under a budget."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from typing import Protocol, TypeVar

from taxcut.errors import TaxcutError

_OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_CONDITION = re.compile(r"^\s*(reward|tax)\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d*)?(?:[eE]-?\d+)?)\s*$")


def task_drops(primary: dict[str, float], baseline: dict[str, float], directions: dict[str, bool]) -> dict[str, float]:
    """Each task's score drop from the SFT model (positive = capability lost), whatever the metric's direction."""
    return {
        name: (baseline[name] - value) if directions.get(name, True) else (value - baseline[name])
        for name, value in primary.items()
        if name in baseline
    }


def tax(primary: dict[str, float], baseline: dict[str, float], directions: dict[str, bool]) -> float:
    """The alignment tax of a candidate: the mean of its task drops from the SFT model."""
    drops = task_drops(primary, baseline, directions)
    return sum(drops.values()) / len(drops) if drops else 0.0


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (reward, tax) points, whether each is non-dominated: no other has reward >= and tax <=, one strictly.
    Points with a non-finite coordinate are never on the front."""
    finite = [(r, t) for r, t in points if math.isfinite(r) and math.isfinite(t)]
    flags = []
    for reward, cost in points:
        dominated = any((r >= reward and t <= cost) and (r > reward or t < cost) for r, t in finite)
        flags.append(math.isfinite(reward) and math.isfinite(cost) and not dominated)
    return flags


def parse_selection(expression: str) -> list[tuple[str, str, float]]:
    """``"tax<=0.02"``, ``"reward>=1.0"`` or both joined by commas -> [(axis, operator, value)]."""
    conditions = []
    for part in expression.split(","):
        found = _CONDITION.match(part)
        if not found:
            raise TaxcutError(
                f"cannot read the selection {part.strip()!r}: write e.g. 'tax<=0.02', 'reward>=1.0' or both, "
                "joined by a comma"
            )
        conditions.append((found.group(1), found.group(2), float(found.group(3))))
    return conditions


class Measured(Protocol):
    """Anything with a reward and a tax (a sweep's rows)."""

    reward: float
    tax: float


Row = TypeVar("Row", bound=Measured)


def select(rows: Sequence[Row], expression: str) -> Row | None:
    """The best row meeting every condition: the highest reward, or the lowest tax when only reward is bounded."""
    conditions = parse_selection(expression)
    eligible = [
        row
        for row in rows
        if math.isfinite(row.reward)
        and math.isfinite(row.tax)
        and all(_OPERATORS[op](getattr(row, axis), value) for axis, op, value in conditions)
    ]
    if not eligible:
        return None
    if all(axis == "reward" for axis, _, _ in conditions):
        return min(eligible, key=lambda row: (row.tax, -row.reward))
    return max(eligible, key=lambda row: (row.reward, -row.tax))
