"""The cost account of a sweep: what its candidates' evaluations cost, and what evaluating them all in full would.

Each candidate counts once, with its last result: its full-data result, or the last stage successive halving
measured it on before dropping it (a stage's cost is that of all its items so far). Evaluating such a candidate in
full is estimated as its cost divided by the share of the data it saw. The unit a strategy is judged by is
tokens (generated + scored, :class:`taxcut.evaluation.cost.EvaluationCost`); seconds are reported beside them.
Results written before taxcut recorded costs have none and are counted apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from taxcut.evaluation.cost import EvaluationCost


@dataclass(frozen=True)
class CostAccount:
    spent: EvaluationCost  # what the candidates' evaluations cost
    full: EvaluationCost  # what evaluating every one of them on all the data costs (estimated for the dropped)
    candidates: int
    partial: int = 0  # candidates measured on part of the data only (dropped by successive halving)
    unknown: int = 0  # results with no recorded cost

    @property
    def saving(self) -> float:
        """The share of the full evaluation's tokens this sweep did not spend."""
        return 1.0 - self.spent.tokens / self.full.tokens if self.full.tokens else 0.0

    def render(self) -> str:
        """One line for the sweep's summary."""
        line = (
            f"evaluation cost: {self.spent.generated_tokens:,} generated + {self.spent.scored_tokens:,} scored "
            f"tokens, {self.spent.seconds:.1f} s for {self.candidates} candidates"
        )
        if self.partial:
            line += (
                f" ({self.partial} dropped on part of the data); all of them in full: {self.full.tokens:,} "
                f"tokens, saved {100 * self.saving:.0f}%"
            )
        if self.unknown:
            line += f"; {self.unknown} results have no recorded cost"
        return line


def cost_account(entries: Iterable[tuple[EvaluationCost | None, float]]) -> CostAccount:
    """The account of (cost, share of the data seen) per candidate (the module's rule)."""
    spent, full = EvaluationCost(), EvaluationCost()
    count = partial = unknown = 0
    for cost, share in entries:
        count += 1
        if cost is None:
            unknown += 1
            continue
        spent = spent + cost
        full = full + (cost if share >= 1.0 else _scaled(cost, 1.0 / share))
        partial += share < 1.0
    return CostAccount(spent, full, count, partial, unknown)


def _scaled(cost: EvaluationCost, factor: float) -> EvaluationCost:
    return EvaluationCost(
        round(cost.generated_tokens * factor), round(cost.scored_tokens * factor), cost.seconds * factor
    )
