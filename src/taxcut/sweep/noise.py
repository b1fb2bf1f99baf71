"""The front with its error bars: the tax's standard error, dominance beyond the noise, hypervolume.

Pure functions on measured points (reward up, tax down is better); nothing here reads a model or a file.

**The tax's error.** The tax is the mean over the T tasks of each task's drop from the SFT model, so its standard
error is ``sqrt(sum_t se_t^2) / T``. Where both the candidate and the SFT model kept the task's per-item scores,
``se_t`` is paired (:func:`paired_tax_stderr`): the standard error of the per-item difference on the items both
saw (:func:`taxcut.evaluation.paired.paired_difference`). That is the error of the drop itself, the SFT model's
noise included, correctly: the items' common difficulty cancels, so it is usually far below either model's own
error, and the SFT row's is 0. A task without per-item scores on both sides (corpus BLEU, a per-token NLL, lm-eval,
a result written before they were kept) keeps the unpaired rule: the candidate's own error alone, the SFT model's
left out (its noise moves every tax together and changes no comparison between candidates). A score without a
standard error (a result written before they were recorded, an lm-eval score) counts as exact; one with an
infinite error (a mean of one item) is never beaten beyond the noise.

**Dominance beyond the noise.** Candidate ``j`` dominates ``i`` beyond the noise at level ``alpha`` when a
one-sided z-test finds ``j`` better on *each* axis:

    reward_j - reward_i >= z * se(reward_j - reward_i)   and   tax_i - tax_j >= z * se(tax_i - tax_j)

with ``z`` the standard normal's ``1 - alpha`` quantile (1.645 at the default ``alpha = 0.05``), and the two points
not equal. Both tests must reject, so by the intersection-union principle the combined test has level ``alpha``.
A candidate is **on the front within the noise** when no candidate dominates it beyond the noise: these are the
candidates the data cannot rule out, a superset of the strict front.

The error of a difference is **paired** where both points carry per-item scores (:attr:`NoisyPoint.items`) for
the axis on exactly the same items: the paired z test on the per-item differences
(:func:`taxcut.evaluation.paired.paired_difference`), which the items' common difficulty (and, with per-item
sampling streams, their common random numbers) no longer inflates. For the reward, the standard error of the
per-item reward differences. For the tax, both taxed against the same SFT scores (:attr:`NoisyPoint.baseline`,
equal on both sides) over the same tasks: the SFT model cancels, so ``tax_i - tax_j`` is the mean over the T tasks
of the difference of the two candidates' task scores (its sign set by each task's direction, which leaves the error
alone), with error ``sqrt(sum_t se_t^2) / T``, ``se_t`` the paired error of task ``t``'s per-item score differences
-- every counted task must have them, else the whole axis falls back. **The fallback** (a point without per-item
scores, other items, another baseline): ``sqrt(se_i^2 + se_j^2)``, the errors taken as independent; candidates
measured on the same items are positively correlated, so this only makes the test conservative. The paired
test's level is ``alpha`` as the normal approximation holds (about 30 items up); on a single common item the error
is infinite and nothing is beaten.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from taxcut.evaluation.paired import ItemScores, PerItem, cautious_paired_error, paired_difference

NOISE_LEVEL = 0.05  # the one-sided level of the noise-aware front and of halving's drops


@dataclass(frozen=True)
class NoisyPoint:
    """A measured candidate: reward (higher is better) and tax (lower is better), each with its standard error;
    optionally its per-item scores, the SFT model's its tax was measured against, and the ``tasks`` the tax counts,
    so that comparisons pair on the items (the module's rule). They take no part in equality."""

    reward: float
    tax: float
    reward_stderr: float = 0.0
    tax_stderr: float = 0.0
    items: PerItem | None = field(default=None, compare=False, repr=False)
    baseline: PerItem | None = field(default=None, compare=False, repr=False)
    tasks: tuple[str, ...] = field(default=(), compare=False)


def z_value(level: float = NOISE_LEVEL) -> float:
    """The standard normal's ``1 - level`` quantile: how many standard errors a one-sided test asks for."""
    return NormalDist().inv_cdf(1.0 - level)


def tax_stderr(stderrs: Mapping[str, float], tasks: Iterable[str]) -> float:
    """The standard error of the tax (the mean drop over ``tasks``) from each task's primary score's error."""
    names = list(tasks)
    if not names:
        return 0.0
    return math.sqrt(sum(_known(stderrs.get(name)) ** 2 for name in names)) / len(names)


def paired_tax_stderr(
    stderrs: Mapping[str, float],
    tasks: Iterable[str],
    items: Mapping[str, ItemScores],
    baseline_items: Mapping[str, ItemScores],
    *,
    cautious: bool = False,
) -> float:
    """:func:`tax_stderr` with each task's error paired where both sides kept its per-item scores (``items``,
    ``baseline_items``) and share items; other tasks keep their own error from ``stderrs``. ``cautious``: the
    error a decision on few items uses (:func:`taxcut.evaluation.paired.cautious_paired_error`)."""
    names = list(tasks)
    errors = dict(stderrs)
    for name in names:
        if name in items and name in baseline_items:
            error = _paired_error(items[name], baseline_items[name], cautious, same_items=False)
            if error is not None and not math.isnan(error):
                errors[name] = error
    return tax_stderr(errors, names)


def dominates_beyond_noise(j: NoisyPoint, i: NoisyPoint, level: float = NOISE_LEVEL, *, cautious: bool = False) -> bool:
    """Whether ``j`` dominates ``i`` beyond the noise (the module's rule: a one-sided test on each axis).
    ``cautious``: points measured on few items (halving's stages); paired errors are then
    :func:`taxcut.evaluation.paired.cautious_paired_error`'s."""
    if not all(math.isfinite(v) for v in (j.reward, j.tax, i.reward, i.tax)):
        return False
    if (j.reward, j.tax) == (i.reward, i.tax):
        return False
    z = z_value(level)
    reward_error = paired_reward_error(j, i, cautious)
    if reward_error is None:
        reward_error = math.hypot(_known(i.reward_stderr), _known(j.reward_stderr))
    tax_error = paired_tax_error(j, i, cautious)
    if tax_error is None:
        tax_error = math.hypot(_known(i.tax_stderr), _known(j.tax_stderr))
    return j.reward - i.reward >= z * reward_error and i.tax - j.tax >= z * tax_error


def _paired_error(
    a: ItemScores | None, b: ItemScores | None, cautious: bool = False, *, same_items: bool = True
) -> float | None:
    """The paired standard error of ``a - b`` where both scored the same items (``same_items=False``: on the
    items both saw; one item: infinite), else None; ``cautious``: the few-items error."""
    if a is None or b is None or not a.items or (same_items and a.items != b.items):
        return None
    return cautious_paired_error(a, b) if cautious else paired_difference(a, b)[1]


def paired_reward_error(j: NoisyPoint, i: NoisyPoint, cautious: bool = False) -> float | None:
    """The standard error of ``reward_j - reward_i`` paired on their items; None: the fallback rule applies."""
    if j.items is None or i.items is None:
        return None
    return _paired_error(j.items.reward, i.items.reward, cautious)


def paired_tax_error(j: NoisyPoint, i: NoisyPoint, cautious: bool = False) -> float | None:
    """The standard error of ``tax_i - tax_j`` paired on every counted task's items (the SFT model cancels, so
    both must be taxed against the same one); None: the fallback rule applies."""
    if (
        j.items is None
        or i.items is None
        or j.baseline is None
        or not j.tasks
        or j.tasks != i.tasks
        or j.baseline != i.baseline
    ):
        return None
    errors = [_paired_error(j.items.tasks.get(name), i.items.tasks.get(name), cautious) for name in j.tasks]
    if any(error is None for error in errors):
        return None
    return math.sqrt(sum(error**2 for error in errors)) / len(errors)


def noise_aware_front(points: Sequence[NoisyPoint], level: float = NOISE_LEVEL) -> list[bool]:
    """For each point, whether no other point dominates it beyond the noise. Points with a non-finite reward or
    tax are never on it."""
    flags = []
    for index, point in enumerate(points):
        finite = math.isfinite(point.reward) and math.isfinite(point.tax)
        flags.append(
            finite
            and not any(dominates_beyond_noise(other, point, level) for k, other in enumerate(points) if k != index)
        )
    return flags


def hypervolume(points: Iterable[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area dominated by (reward, tax) ``points`` and bounded by ``reference`` = (reward, tax): the region of
    rewards above the reference's and taxes below its. Points not better than the reference on both axes add
    nothing."""
    floor, ceiling = reference
    inside = sorted((t, r) for r, t in points if math.isfinite(r) and math.isfinite(t) and r > floor and t < ceiling)
    area, best = 0.0, floor
    for index, (cost, reward) in enumerate(inside):  # sweep from the lowest tax: each point raises the best reward
        best = max(best, reward)
        right = inside[index + 1][0] if index + 1 < len(inside) else ceiling
        area += (right - cost) * (best - floor)
    return area


def _known(value: float | None) -> float:
    """An error as the test uses it: not recorded (None, NaN) counts as exact; an infinite error stays infinite."""
    return 0.0 if value is None or math.isnan(value) else value
