"""Seeded, nested subsets of an evaluation's items, for successive halving.

Each evaluator's items (reward prompts, with all their samples; a task's records) are put in one seeded order per
evaluator name; the share ``s`` of the data is the first ``ceil(s * n)`` items of that order. So a smaller share's
items are always among a larger share's, and a :class:`DataPart` ``[start, stop)`` is exactly the items a
candidate measured on the first ``start`` of the data still needs to reach ``stop``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from taxcut.errors import TaxcutError


@dataclass(frozen=True)
class DataPart:
    """The items between two shares of every evaluator's data: ``[start, stop)`` of its seeded order."""

    start: float = 0.0
    stop: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < self.stop <= 1.0:
            raise TaxcutError(
                f"a part of the evaluation data must lie in [0, 1] and not be empty, got [{self.start}, {self.stop})"
            )

    @property
    def full(self) -> bool:
        return self.start == 0.0 and self.stop == 1.0

    def items(self, name: str, size: int) -> list[int] | None:
        """The item indices of this part for the evaluator ``name`` with ``size`` items (None: all, in order)."""
        if self.full:
            return None
        order = item_order(name, size, self.seed)
        return sorted(order[share_count(self.start, size) : share_count(self.stop, size)])


FULL = DataPart()


def share_count(share: float, size: int) -> int:
    """How many of ``size`` items the share ``share`` covers: ``ceil(share * size)`` (all of them at share 1)."""
    return size if share >= 1.0 else min(size, math.ceil(share * size - 1e-9))


def item_order(name: str, size: int, seed: int = 0) -> list[int]:
    """The seeded order of an evaluator's items; the same for the same name, size and seed on every machine."""
    order = list(range(size))
    random.Random(f"taxcut-halving:{seed}:{name}:{size}").shuffle(order)
    return order
