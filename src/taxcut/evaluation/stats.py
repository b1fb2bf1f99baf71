"""Item-level scores summed up: a metric's value, its standard error, and how two disjoint sets of items combine.

Every built-in score is a :class:`Statistic` over the items it saw (prompts x samples for the reward, questions or
texts for a task). Successive halving grows a candidate's evaluation set by adding items, so a statistic of the
first items and one of the next merge into the statistic of both, equal to measuring them together.

The standard error of each metric, and the rule it follows:

- a share of items that are right (``acc``, ``acc_norm``, ``exact_match``): binomial, ``sqrt(p (1 - p) / n)``;
- a mean of item scores (the reward over prompts x samples, token ``f1``): the sample standard deviation
  ``/ sqrt(n)``;
- a ratio of sums (``nll``: negative log-likelihood over tokens): the delta method,
  ``sqrt(sum_i (x_i - R y_i)^2 / (n (n - 1))) / mean(y)`` with ``R = sum x / sum y``; ``perplexity = exp(nll)``
  gets ``exp(nll) * se(nll)``;
- corpus BLEU, which has no closed form: the standard deviation of BLEU over bootstrap resamples of the items
  (``BOOTSTRAP_RESAMPLES``, seeded, so the same items always give the same error).

A score reported without its items (an lm-evaluation-harness metric the harness does not average over
documents) is a :class:`Reported` value with no error.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from taxcut.errors import TaxcutError

BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0


class Statistic(Protocol):
    """A metric over a set of items: its value, its standard error, and its merge with disjoint items."""

    @property
    def value(self) -> float: ...

    @property
    def stderr(self) -> float: ...

    def merge(self, other: Any) -> Statistic: ...

    def to_json(self) -> dict[str, Any]: ...


def binomial_stderr(share: float, count: int) -> float:
    """The standard error of a share of ``count`` yes/no items: ``sqrt(p (1 - p) / n)``."""
    return math.sqrt(share * (1.0 - share) / count) if count > 0 else math.nan


def cautious_stderr(stat: Statistic) -> float:
    """The error a decision on few items uses (successive halving's early stages): a share of yes/no items is taken
    as ``(right + 1) / (n + 2)`` (Laplace's rule of succession), so that 0 of 3 or 3 of 3 is not read as exact; a
    mean or ratio over fewer than two items has an unknown, infinite error; anything else, its standard error."""
    count = getattr(stat, "count", None)
    if isinstance(stat, Mean) and stat.binary and stat.count:
        return binomial_stderr((stat.total + 1) / (stat.count + 2), stat.count)
    if count is not None and count < 2:
        return math.inf
    return stat.stderr


def bootstrap_stderr(
    items: Sequence[Any],
    statistic: Callable[[Sequence[Any]], float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> float:
    """The standard deviation of ``statistic`` over ``resamples`` resamples of ``items`` drawn with replacement
    (seeded: the same items give the same error); 0 for fewer than two items."""
    if len(items) < 2:
        return 0.0
    generator = random.Random(seed)
    values = [statistic([items[generator.randrange(len(items))] for _ in items]) for _ in range(resamples)]
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class Mean:
    """The mean of item scores: ``count`` items, their sum ``total`` and ``m2``, the sum of squared deviations
    from their mean. ``binary``: every item is 0 or 1, and the error is binomial."""

    count: int
    total: float
    m2: float
    binary: bool = False

    @classmethod
    def of(cls, values: Sequence[float], *, binary: bool = False) -> Mean:
        count = len(values)
        if count == 0:
            return cls(0, 0.0, 0.0, binary)
        mean = sum(values) / count
        return cls(count, float(sum(values)), float(sum((v - mean) ** 2 for v in values)), binary)

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def stderr(self) -> float:
        if self.binary:
            return binomial_stderr(self.value, self.count)
        if self.count < 2:
            return 0.0 if self.count else math.nan
        return math.sqrt(self.m2 / (self.count - 1) / self.count)

    def merge(self, other: Mean) -> Mean:
        """Chan et al.'s parallel update: the sums add, ``m2`` gains ``delta^2 n1 n2 / n``."""
        if not other.count:
            return self
        if not self.count:
            return other
        count = self.count + other.count
        delta = other.total / other.count - self.total / self.count
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / count
        return Mean(count, self.total + other.total, m2, self.binary and other.binary)

    def to_json(self) -> dict[str, Any]:
        return {"type": "mean", "count": self.count, "total": self.total, "m2": self.m2, "binary": self.binary}


@dataclass(frozen=True)
class Ratio:
    """``sum(x) / sum(y)`` over items (the negative log-likelihood per token: x an item's NLL, y its tokens), kept
    as the sums the delta method needs. ``exp``: the value is ``exp(sum x / sum y)`` (perplexity)."""

    count: int
    x: float
    y: float
    xx: float
    yy: float
    xy: float
    exp: bool = False

    @classmethod
    def of(cls, pairs: Sequence[tuple[float, float]], *, exp: bool = False) -> Ratio:
        return cls(
            len(pairs),
            sum(x for x, _ in pairs),
            sum(y for _, y in pairs),
            sum(x * x for x, _ in pairs),
            sum(y * y for _, y in pairs),
            sum(x * y for x, y in pairs),
            exp,
        )

    @property
    def ratio(self) -> float:
        return self.x / max(self.y, 1.0)

    @property
    def value(self) -> float:
        return math.exp(self.ratio) if self.exp else self.ratio

    @property
    def stderr(self) -> float:
        if self.count < 2 or self.y <= 0:
            return 0.0 if self.count else math.nan
        ratio = self.x / self.y
        residuals = max(self.xx - 2 * ratio * self.xy + ratio * ratio * self.yy, 0.0)  # sum (x_i - R y_i)^2
        error = math.sqrt(residuals / (self.count * (self.count - 1))) / (self.y / self.count)
        return self.value * error if self.exp else error

    def merge(self, other: Ratio) -> Ratio:
        return Ratio(
            self.count + other.count,
            self.x + other.x,
            self.y + other.y,
            self.xx + other.xx,
            self.yy + other.yy,
            self.xy + other.xy,
            self.exp,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "ratio",
            "count": self.count,
            "x": self.x,
            "y": self.y,
            "xx": self.xx,
            "yy": self.yy,
            "xy": self.xy,
            "exp": self.exp,
        }


@dataclass(frozen=True)
class CorpusBleu:
    """Corpus BLEU (0-1) from each item's sufficient statistics, as sacrebleu extracts them
    (``[hypothesis length, reference length, 4 n-gram matches, 4 n-gram totals]``); its error is bootstrapped."""

    items: tuple[tuple[int, ...], ...]

    @property
    def value(self) -> float:
        return _bleu_of(self.items)

    @property
    def stderr(self) -> float:
        return bootstrap_stderr(self.items, _bleu_of)

    def merge(self, other: CorpusBleu) -> CorpusBleu:
        return CorpusBleu(self.items + other.items)

    def to_json(self) -> dict[str, Any]:
        return {"type": "bleu", "items": [list(item) for item in self.items]}


@dataclass(frozen=True)
class Reported:
    """A score reported without its items (lm-evaluation-harness): no standard error, and no merging."""

    score: float
    error: float = math.nan

    @property
    def value(self) -> float:
        return self.score

    @property
    def stderr(self) -> float:
        return self.error

    def merge(self, other: Reported) -> Reported:
        raise TaxcutError("a score reported without its items cannot be grown item by item; evaluate it in full")

    def to_json(self) -> dict[str, Any]:
        return {"type": "reported", "score": self.score, "error": self.error}


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> CorpusBleu:
    """The items' BLEU statistics (each item's references as a list; padded with its first as corpus_bleu is)."""
    from sacrebleu.metrics import BLEU

    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    stats = BLEU()._extract_corpus_statistics(list(hypotheses), streams)
    return CorpusBleu(tuple(tuple(int(v) for v in item) for item in stats))


def sentence_bleu_scores(stat: CorpusBleu) -> list[float]:
    """Each item's own BLEU (0-1) from its statistics, as ``sacrebleu.sentence_bleu`` scores a sentence (``exp``
    smoothing, effective order): the per-item score paired comparisons use, since corpus BLEU does not split into
    item scores (their mean is not the corpus BLEU; :class:`CorpusBleu` over the items is)."""
    from sacrebleu.metrics import BLEU

    sentence = BLEU(effective_order=True)
    return [sentence._compute_score_from_stats(list(item)).score / 100.0 for item in stat.items]


def _bleu_of(items: Sequence[Sequence[int]]) -> float:
    from sacrebleu.metrics import BLEU

    if not items:
        return math.nan
    totals = [sum(column) for column in zip(*items)]
    return BLEU()._compute_score_from_stats(totals).score / 100.0


_TYPES: dict[str, Callable[..., Any]] = {
    "mean": Mean,
    "ratio": Ratio,
    "reported": Reported,
    "bleu": lambda items: CorpusBleu(tuple(tuple(item) for item in items)),
}


def statistic_from_json(data: Mapping[str, Any]) -> Statistic:
    """The inverse of ``to_json``."""
    fields = dict(data)
    kind = fields.pop("type", None)
    if kind not in _TYPES:
        raise TaxcutError(f"unknown statistic type {kind!r}")
    return _TYPES[kind](**fields)
