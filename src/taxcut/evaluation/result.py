"""What one evaluation measured, as typed data: the reward axis and each tax task's scores.

:meth:`EvaluationResult.to_dict` is the plain-data shape (``taxcut eval --json``, a sweep's results file):
``{"tasks": {name: {metric: value}}, "primary": {name: value}, "reward": {"reward", "reward_stderr",
"samples"}, "directions": {name: higher_is_better}, "seconds": ..., "stderr": {name: {metric: error}},
"primary_stderr": {name: error}, "cost": {"generated_tokens", "scored_tokens", "seconds"}}`` (``reward`` only where
one was measured; ``stderr``, ``primary_stderr`` and ``cost`` only where recorded: results written before taxcut
kept them have none; ``items``, the per-item scores of :class:`taxcut.evaluation.paired.PerItem`, only where
kept). The standard errors follow :mod:`taxcut.evaluation.stats`; the cost
:mod:`taxcut.evaluation.cost`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import TypeAdapter

from taxcut.evaluation.cost import EvaluationCost
from taxcut.evaluation.paired import PerItem


@dataclass(frozen=True)
class RewardScore:
    """The mean reward of a model's responses, its standard error, and how many responses were scored."""

    reward: float
    reward_stderr: float
    samples: int

    @classmethod
    def from_scores(cls, scores: Mapping[str, float]) -> RewardScore:
        """From a reward evaluator's named scores (``reward``, ``reward_stderr``, ``samples``)."""
        return cls(float(scores["reward"]), float(scores["reward_stderr"]), int(scores["samples"]))


@dataclass(frozen=True)
class EvaluationResult:
    """Every task's scores by metric, each task's primary score (the one the tax uses) and its direction (True
    where higher is better), the reward where one was measured, and the seconds it all took; the standard error of
    every score and what the evaluation cost, where recorded; per-item scores, where kept (paired comparisons)."""

    tasks: dict[str, dict[str, float]]
    primary: dict[str, float]
    directions: dict[str, bool]
    seconds: float
    reward: RewardScore | None = None
    stderr: dict[str, dict[str, float]] | None = None
    primary_stderr: dict[str, float] | None = None
    cost: EvaluationCost | None = None
    items: PerItem | None = None

    def higher_is_better(self, task: str) -> bool:
        """The direction of ``task``'s scores (every metric of a task is read in its primary metric's direction)."""
        return self.directions.get(task, True)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tasks": self.tasks, "primary": self.primary}
        if self.reward is not None:
            data["reward"] = asdict(self.reward)
        data.update(directions=self.directions, seconds=self.seconds)
        if self.stderr is not None:
            data.update(stderr=self.stderr, primary_stderr=self.primary_stderr)
        if self.cost is not None:
            data["cost"] = asdict(self.cost)
        if self.items:
            data["items"] = self.items.to_json()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationResult:
        """The inverse of :meth:`to_dict`; a missing or mistyped field raises pydantic's ``ValidationError``."""
        return _ADAPTER.validate_python(dict(data))


_ADAPTER = TypeAdapter(EvaluationResult)
