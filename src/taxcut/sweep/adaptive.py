"""The adaptive ratio grid: evaluate the ratios where the front is still uncertain, not a fixed grid.

A **family** is a path of candidates indexed by ``a`` from the SFT model (``a = 0``) to the aligned model
(``a = 1``): MA (one ratio ``a``), a block or layer profile ``p`` moved along ``a`` (:func:`profile_at`; a LiNeS
depth profile ``[alpha, beta]`` the same way, :func:`lines_at`), or HMA
fitted at mean ratio ``a``. Each family starts from a few ratios (MA: 0, 0.5, 1; a profile: its own mean; HMA: its
``mean_alphas``); then, one round at a time, the strategy evaluates the midpoint of the segment between two
neighbouring ratios of a family that can still add the most to the front:

    gain(segment) = HV(front + corner) - HV(front)

where ``corner`` = (the larger reward, the smaller tax) of the segment's two ends -- the best the family's curve
between them can reach if it moves monotonically from one end to the other -- and ``HV`` is the hypervolume of
every point measured so far (:func:`taxcut.sweep.noise.hypervolume`), from the nadir of those points. A segment
already dominated by other candidates gains nothing; one between two neighbours of a steep front gains its whole
box. Ties go to the smaller ``a``. The strategy stops at the budget (in full evaluations: under successive halving a
candidate dropped early counts the share of the data it saw), when no segment wider than ``resolution`` is
left, or when the best gain is below ``tolerance`` times the front's hypervolume.

The functions here are pure: :func:`next_ratios` picks from measured points; :func:`adaptive_search` runs the
rounds through one batch-measuring function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from taxcut.errors import TaxcutError
from taxcut.spec.candidates import Candidate
from taxcut.sweep.noise import NoisyPoint, hypervolume

RATIO_DIGITS = 6  # ratios proposed by bisection are rounded to this many digits (stable ids)


@dataclass(frozen=True)
class Family:
    """A path of candidates ``make(a)``, ``a`` in [0, 1], and the ratios it starts from (0 and 1 are always
    there: the SFT and aligned models)."""

    name: str
    make: Callable[[float], Candidate]
    start: tuple[float, ...] = (0.5,)

    def start_ratios(self) -> list[float]:
        return sorted({0.0, 1.0, *(round(a, RATIO_DIGITS) for a in self.start)})


@dataclass(frozen=True)
class Proposal:
    family: str
    a: float
    gain: float


def profile_at(profile: Sequence[float], a: float) -> list[float]:
    """The profile ``p`` (mean ``m``) moved to mean ratio ``a``: scaled from 0 up to ``p`` for ``a <= m``
    (``p * a / m``), then each ratio moved the same share of its way to 1 (``p + (1 - p) (a - m) / (1 - m)``).
    Every ratio stays in [0, 1], the mean is exactly ``a``, ``a = m`` gives ``p`` itself, 0 the SFT and 1 the aligned
    model."""
    mean = sum(profile) / len(profile)
    if a <= mean:
        values = [p * a / mean if mean > 0 else a for p in profile]
    else:
        values = [p + (1.0 - p) * (a - mean) / (1.0 - mean) if mean < 1 else 1.0 for p in profile]
    return [round(v, RATIO_DIGITS) for v in values]


def lines_at(profile: Sequence[float], a: float) -> list[float]:
    """The depth profile ``[alpha, beta]`` moved to mean ratio ``a`` as :func:`profile_at` moves a block pattern:
    its bottom and top ratios (``alpha``, ``alpha + beta`` clipped to [0, 1]) are moved together, so the profile
    stays a line with every ratio in [0, 1] and its mean (:func:`taxcut.spec.merge.profile_mean`) is ``a``."""
    alpha, beta = profile
    bottom, top = profile_at([alpha, min(1.0, max(0.0, alpha + beta))], a)
    return [bottom, round(top - bottom, RATIO_DIGITS)]


def lines_mean(profile: Sequence[float]) -> float:
    """Where a depth profile stands on its :func:`lines_at` path: the mean of its bottom and (clipped) top ratio."""
    alpha, beta = profile
    return (alpha + min(1.0, max(0.0, alpha + beta))) / 2


def segment_gain(
    left: NoisyPoint, right: NoisyPoint, front: Sequence[tuple[float, float]], reference: tuple[float, float]
) -> float:
    """How much the hypervolume of ``front`` grows if the best corner of the segment between ``left`` and
    ``right`` is added (the module's rule)."""
    corner = (max(left.reward, right.reward), min(left.tax, right.tax))
    return hypervolume([*front, corner], reference) - hypervolume(front, reference)


def next_ratios(
    curves: Mapping[str, Mapping[float, NoisyPoint]],
    others: Sequence[NoisyPoint] = (),
    *,
    resolution: float = 1 / 64,
    tolerance: float = 0.0,
    count: int = 1,
) -> list[Proposal]:
    """The ``count`` midpoints to evaluate next: of the segments (neighbouring ratios of one family's curve) wider
    than ``resolution``, those with the largest gain, if it is above ``tolerance`` times the front's hypervolume;
    ties to the smaller ``a``. ``others``: measured points that belong to no family (checkpoints, ratios files)."""
    points = [p for curve in curves.values() for p in curve.values()] + list(others)
    front = [(p.reward, p.tax) for p in points]
    if len(front) < 2:
        return []
    reference = (min(r for r, _ in front), max(t for _, t in front))
    floor = tolerance * hypervolume(front, reference)
    proposals = []
    for name, curve in curves.items():
        ratios = sorted(curve)
        for left, right in zip(ratios, ratios[1:]):
            if right - left <= resolution:
                continue
            gain = segment_gain(curve[left], curve[right], front, reference)
            if gain > floor and gain > 0.0:
                proposals.append(Proposal(name, round((left + right) / 2, RATIO_DIGITS), gain))
    proposals.sort(key=lambda p: (-p.gain, p.a, p.family))
    return proposals[:count]


MeasureBatch = Callable[[Sequence[Candidate]], Mapping[str, NoisyPoint]]
"""Measure candidates (in full, or by successive halving); their points by candidate id."""

SpentEvaluation = Callable[[Sequence[Candidate]], float]
"""The evaluation spent on candidates, in full evaluations: 1 for each one measured on all the data, the share of
the data it saw for one that successive halving dropped."""


@dataclass
class AdaptiveOutcome:
    candidates: list[Candidate] = field(default_factory=list)  # every candidate evaluated, in order
    curves: dict[str, dict[float, NoisyPoint]] = field(default_factory=dict)
    rounds: int = 0


def adaptive_search(
    families: Sequence[Family],
    measure: MeasureBatch,
    *,
    budget: int,
    fixed: Sequence[Candidate] = (),
    resolution: float = 1 / 64,
    tolerance: float = 0.0,
    batch: int = 1,
    spent: SpentEvaluation = len,
) -> AdaptiveOutcome:
    """Measure every family's start ratios and the ``fixed`` candidates, then ``batch`` proposals of
    :func:`next_ratios` per round while the next one fits in ``budget`` full evaluations (``spent``: by default
    one per candidate; under successive halving a dropped candidate counts the share of the data it saw, so what
    halving saves buys more candidates), or until nothing is left to gain. A candidate that two families share
    (the SFT and aligned models) is measured once."""
    made = {f.name: {a: f.make(a) for a in f.start_ratios()} for f in families}
    start = {c.id: c for c in [*(c for ratios in made.values() for c in ratios.values()), *fixed]}
    if len(start) > budget:
        raise TaxcutError(
            f"candidates.budget is {budget}, but the adaptive grid starts from {len(start)} candidates; "
            "raise the budget or start from fewer"
        )
    outcome = AdaptiveOutcome(candidates=list(start.values()))
    points = dict(measure(outcome.candidates))
    by_name = {f.name: f for f in families}
    while True:
        outcome.curves = {
            name: {a: points[c.id] for a, c in ratios.items() if c.id in points} for name, ratios in made.items()
        }
        others = [points[c.id] for c in fixed if c.id in points]
        room = int(budget - spent(outcome.candidates) + 1e-9)  # each proposal may cost a full evaluation
        proposals = (
            next_ratios(outcome.curves, others, resolution=resolution, tolerance=tolerance, count=min(batch, room))
            if room > 0
            else []
        )
        if not proposals:
            return outcome
        fresh = []
        for proposal in proposals:
            candidate = by_name[proposal.family].make(proposal.a)
            made[proposal.family][proposal.a] = candidate
            if candidate.id not in points and candidate.id not in {c.id for c in fresh}:
                fresh.append(candidate)
        outcome.candidates += fresh
        points.update(measure(fresh))
        outcome.rounds += 1
