"""Per-item scores and paired comparisons: two models measured on the same items are compared item by item.

Candidates of a sweep answer the same prompts and questions (and, with :mod:`taxcut.evaluation.item_sampling`,
draw the same random numbers), so their scores are positively correlated. The difference of two means then has the
error of the mean of the per-item differences, far below ``sqrt(se_a^2 + se_b^2)``: the paired t / z test on
differences (as in common random numbers in simulation, and Koehn 2004's paired bootstrap for MT). For yes/no items
the exact test is McNemar's (1947): only the items the two models disagree on count, and under "no difference"
each is a fair coin.

The level: :func:`paired_difference` gives the mean difference and its standard error; a one-sided z test at level
``alpha`` rejects "no better" when the difference is at least ``z_{1-alpha}`` errors (taxcut's decisions use
``alpha = 0.05``, :data:`taxcut.sweep.noise.NOISE_LEVEL`). On few items (under about 30 differences, or few
disagreements on yes/no items) use :func:`mcnemar_p`, exact at any count, two-sided.

An item's key is its stable identity (:mod:`taxcut.evaluation.subset` orders the same indices): a task record's
index in its file's records; sample ``j`` of reward prompt ``i``: ``i * samples_per_prompt + j``. So the items a
halving stage measured have the same keys as in a full run, and stages merge by union.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from taxcut.errors import TaxcutError

SIGNIFICANT_DIGITS = 6  # per-item scores are kept to this precision: compact lines, and far below any error


def _rounded(value: float) -> float:
    return float(f"{float(value):.{SIGNIFICANT_DIGITS}g}")


@dataclass(frozen=True)
class ItemScores:
    """One metric's score of every item a model saw: item keys (sorted, unique) and their scores."""

    items: tuple[int, ...] = ()
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:  # ValueError: a results line's pydantic check reports it with its line
        if len(self.items) != len(self.values):
            raise ValueError(
                f"per-item scores: {len(self.items)} items but {len(self.values)} values; they must pair up one to one"
            )
        if len(set(self.items)) != len(self.items):
            raise ValueError("per-item scores: an item appears twice; each item has one score")

    @classmethod
    def of(cls, keys: Iterable[int], values: Iterable[float]) -> ItemScores:
        """The scores of items ``keys`` (any order), rounded to :data:`SIGNIFICANT_DIGITS` digits."""
        pairs = sorted(zip((int(k) for k in keys), (_rounded(v) for v in values), strict=True))
        return cls(tuple(k for k, _ in pairs), tuple(v for _, v in pairs))

    def __len__(self) -> int:
        return len(self.items)

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.items, self.values))

    def merge(self, other: ItemScores) -> ItemScores:
        """The scores of both sets of items (disjoint: a halving stage adds new items to the earlier ones)."""
        if set(self.items) & set(other.items):
            raise TaxcutError("per-item scores of overlapping items cannot be merged; a stage adds new items only")
        return ItemScores.of(self.items + other.items, self.values + other.values)

    def to_json(self) -> dict[str, list]:
        return {"items": list(self.items), "values": list(self.values)}

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence]) -> ItemScores:
        return cls(tuple(int(k) for k in data["items"]), tuple(float(v) for v in data["values"]))


@dataclass(frozen=True)
class PerItem:
    """A model's per-item scores: the reward's over (prompt, sample), and each task's primary metric's over its
    records (an lm-eval task's: its documents). Corpus BLEU keeps each record's sentence BLEU, ``nll`` each text's
    NLL over the mean token count (:mod:`taxcut.evaluation.tasks`); a metric with no per-item form (perplexity, an
    lm-eval metric the harness does not average over documents) has none."""

    reward: ItemScores | None = None
    tasks: dict[str, ItemScores] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.reward is not None or bool(self.tasks)

    def merge(self, other: PerItem | None) -> PerItem:
        """Both sets of items; an evaluator that one side has no scores for has none in the merge (a part of its
        items would pass for all of them)."""
        if other is None:
            return PerItem()
        reward = self.reward.merge(other.reward) if self.reward is not None and other.reward is not None else None
        return PerItem(
            reward,
            {name: scores.merge(other.tasks[name]) for name, scores in self.tasks.items() if name in other.tasks},
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tasks": {name: scores.to_json() for name, scores in self.tasks.items()}}
        if self.reward is not None:
            data["reward"] = self.reward.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PerItem:
        reward = ItemScores.from_json(data["reward"]) if data.get("reward") is not None else None
        return cls(reward, {name: ItemScores.from_json(s) for name, s in data.get("tasks", {}).items()})


def paired_difference(a: ItemScores, b: ItemScores) -> tuple[float, float, int]:
    """``(mean of a - b, its standard error, n)`` over the ``n`` items both saw: the sample standard deviation of
    the per-item differences over ``sqrt(n)``. No common items: ``(nan, nan, 0)``; one: an infinite error (one
    difference says nothing of its spread)."""
    theirs = b.as_dict()
    differences = [value - theirs[key] for key, value in zip(a.items, a.values) if key in theirs]
    n = len(differences)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(differences) / n
    if n == 1:
        return mean, math.inf, 1
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
    return mean, math.sqrt(variance / n), n


def cautious_paired_error(a: ItemScores, b: ItemScores) -> float:
    """The paired standard error of ``a - b`` that a decision on few items uses (halving's early stages): the
    per-item differences plus one pseudo-difference each way, as large as the largest difference seen (when the
    two agree on every item: the scores' range, or 1 when every score is equal), so that two models agreeing on
    every item seen so far, or apart on three yes/no items out of forty, are not read as surely equal or surely
    apart -- the paired counterpart of Laplace's rule
    (:func:`taxcut.evaluation.stats.cautious_stderr`); it tends to the paired error as the items grow. Fewer
    than two common items: infinite; none: NaN."""
    theirs = b.as_dict()
    pairs = [(value, theirs[key]) for key, value in zip(a.items, a.values) if key in theirs]
    if not pairs:
        return math.nan
    if len(pairs) < 2:
        return math.inf
    differences = [x - y for x, y in pairs]
    pooled = [v for pair in pairs for v in pair]
    spread = max(abs(d) for d in differences) or (max(pooled) - min(pooled)) or 1.0
    differences += [spread, -spread]
    n = len(differences)
    mean = sum(differences) / n
    return math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1) / n)


def mcnemar_p(a: ItemScores, b: ItemScores) -> float:
    """McNemar's exact two-sided p-value for yes/no (0/1) scores on the items both saw: with ``k`` items only ``a``
    got right and ``m`` only ``b`` did, ``min(1, 2 P(X <= min(k, m)))`` for ``X ~ Binomial(k + m, 1/2)``; 1 when
    they never disagree."""
    theirs = b.as_dict()
    pairs = [(value, theirs[key]) for key, value in zip(a.items, a.values) if key in theirs]
    if any(v not in (0.0, 1.0) for pair in pairs for v in pair):
        raise TaxcutError("McNemar's test needs yes/no (0 or 1) scores; use paired_difference for other scores")
    only_a = sum(1 for x, y in pairs if x > y)
    only_b = sum(1 for x, y in pairs if y > x)
    total = only_a + only_b
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, k) for k in range(min(only_a, only_b) + 1)) / 2**total
    return min(1.0, 2 * tail)
