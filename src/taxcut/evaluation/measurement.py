"""One model's evaluation as statistics over the items it saw, before it is summed up into an
:class:`~taxcut.evaluation.result.EvaluationResult`.

A measurement on some items and one on other items of the same evaluation merge into the measurement of both
(:meth:`Measurement.merge`): successive halving grows a candidate's evaluation that way instead of starting again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from taxcut.evaluation.cost import EvaluationCost
from taxcut.evaluation.paired import PerItem
from taxcut.evaluation.result import EvaluationResult, RewardScore
from taxcut.evaluation.stats import Statistic, cautious_stderr, statistic_from_json


@dataclass(frozen=True)
class Measurement:
    """The reward's statistic (over prompts x samples), every task's statistics by metric, each task's primary
    metric and direction, what it cost, and the per-item scores kept for paired comparisons (None: none kept)."""

    reward: Statistic | None
    tasks: dict[str, dict[str, Statistic]]
    primary_metrics: dict[str, str]
    directions: dict[str, bool]
    cost: EvaluationCost = field(default_factory=EvaluationCost)
    items: PerItem | None = None

    def merge(self, other: Measurement) -> Measurement:
        """This measurement and one of other items of the same evaluation, as one."""
        reward = self.reward.merge(other.reward) if self.reward is not None and other.reward is not None else None
        tasks = {
            name: {metric: stat.merge(other.tasks[name][metric]) for metric, stat in metrics.items()}
            for name, metrics in self.tasks.items()
        }
        items = self.items.merge(other.items) if self.items is not None else None
        return Measurement(reward, tasks, self.primary_metrics, self.directions, self.cost + other.cost, items or None)

    def result(self, *, cautious: bool = False) -> EvaluationResult:
        """The values and standard errors of every score, and the cost; ``cautious``: the errors a decision on few
        items uses (:func:`taxcut.evaluation.stats.cautious_stderr`) instead of the standard errors."""
        error = cautious_stderr if cautious else (lambda stat: stat.stderr)
        scores = {
            name: {metric: stat.value for metric, stat in metrics.items()} for name, metrics in self.tasks.items()
        }
        errors = {
            name: {metric: error(stat) for metric, stat in metrics.items()} for name, metrics in self.tasks.items()
        }
        reward = (
            RewardScore(self.reward.value, error(self.reward), int(getattr(self.reward, "count", 0)))
            if self.reward is not None
            else None
        )
        return EvaluationResult(
            tasks=scores,
            primary={name: scores[name][metric] for name, metric in self.primary_metrics.items()},
            directions=dict(self.directions),
            seconds=self.cost.seconds,
            reward=reward,
            stderr=errors,
            primary_stderr={name: errors[name][metric] for name, metric in self.primary_metrics.items()},
            cost=self.cost,
            items=self.items or None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "reward": self.reward.to_json() if self.reward is not None else None,
            "tasks": {
                name: {metric: stat.to_json() for metric, stat in metrics.items()}
                for name, metrics in self.tasks.items()
            },
            "primary_metrics": self.primary_metrics,
            "directions": self.directions,
            "cost": {
                "generated_tokens": self.cost.generated_tokens,
                "scored_tokens": self.cost.scored_tokens,
                "seconds": self.cost.seconds,
            },
            **({"items": self.items.to_json()} if self.items else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measurement:
        reward = statistic_from_json(data["reward"]) if data.get("reward") is not None else None
        tasks = {
            name: {metric: statistic_from_json(stat) for metric, stat in metrics.items()}
            for name, metrics in data["tasks"].items()
        }
        items = PerItem.from_json(data["items"]) if data.get("items") is not None else None
        return cls(
            reward,
            tasks,
            dict(data["primary_metrics"]),
            dict(data["directions"]),
            EvaluationCost(**data.get("cost", {})),
            items,
        )
