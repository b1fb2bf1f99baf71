"""Successive halving on the evaluation data: spend the full evaluation only on candidates that may be on the front.

Every candidate is first measured on a seeded share of the items (``start``, 1/8 by default: the first items of each
evaluator's seeded order, :mod:`taxcut.evaluation.subset`). At each stage, a candidate that another candidate (or a
fully evaluated one) dominates beyond the noise (:func:`taxcut.sweep.noise.dominates_beyond_noise`, one-sided on
each axis at ``level``, with the cautious errors of few items: :func:`taxcut.evaluation.stats.cautious_stderr`) is
dropped (two candidates measured on the same items are compared by their per-item differences, the paired test of
:mod:`taxcut.sweep.noise`, with one pseudo-difference each way for few items:
:func:`taxcut.evaluation.paired.cautious_paired_error`); the survivors' share grows by ``factor`` -- by measuring
only the items they have not seen yet and merging them in, so a survivor costs one full evaluation in all -- up to
the whole data.
The SFT model, the tax's baseline, is never dropped, and at each stage the tax is measured against it on the same
items; nor is the aligned model (the sweep keeps it): the two models the user brought frame the front. Whatever
survives the last stage is on the front within the noise and has been measured in full.

Every stage of every candidate is a line of the results file, labelled with its ``share``, under a context of its
own (:func:`stage_context`): a killed sweep resumes from the stages already there, and only full-data results
count as a candidate's result in the report.

**Candidates that cannot matter** (``tolerance``, 1% by default; 0 keeps dominance alone). Dominance beyond the
noise keeps every candidate whose reward ties a better one's within the noise, however far behind it is on tax -- on
a front where rewards saturate, that is most of them. So a stage also drops, one at a time, the candidate whose
*best case* adds least to the hypervolume, while that is less than ``tolerance`` of the front's hypervolume: the best
case is its corner ``(reward + z se_r, tax - z se_t)`` at the stage's level, set against the other candidates' points
as measured on the same items (the SFT model and the fully measured ones included), the hypervolume taken from their
nadir (:func:`best_case_gain`). It is the hypervolume-contribution rule of SMS-EMOA (Beume, Naujoks & Emmerich,
"SMS-EMOA: Multiobjective selection based on dominated hypervolume", EJOR 2007) with the candidate given the benefit
of its error bars; what it gives up is bounded by ``tolerance`` of the front per dropped candidate, as far as the
other points' estimates hold.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from taxcut.errors import TaxcutError
from taxcut.evaluation.measurement import Measurement
from taxcut.evaluation.result import EvaluationResult
from taxcut.evaluation.subset import DataPart, share_count
from taxcut.spec.candidates import Candidate
from taxcut.sweep.noise import (
    NOISE_LEVEL,
    NoisyPoint,
    dominates_beyond_noise,
    hypervolume,
    paired_reward_error,
    paired_tax_error,
    paired_tax_stderr,
    z_value,
)
from taxcut.sweep.pareto import tax

NEGLIGIBLE_GAIN = 0.01  # halving's default tolerance: a best case under 1% of the front's hypervolume is dropped

EvaluateBatch = Callable[[Sequence[Candidate], DataPart], Iterable[tuple[Candidate, Measurement]]]
"""The one function the strategies call: measure each candidate on a part of the evaluation data, yielding each as
it finishes (in any order). Full data is ``DataPart()``."""


class StageBook(Protocol):
    """The results file as halving sees it."""

    def full(self, candidate_id: str) -> EvaluationResult | None:
        """The candidate's full-data result, if it has one."""

    def stage(self, candidate_id: str, share: float) -> Measurement | None:
        """The candidate's measurement on the first ``share`` of the data, if it has one."""

    def shares(self, candidate_id: str) -> list[float]:
        """The shares (< 1) the candidate has stage records for."""

    def add(self, candidate: Candidate, measurement: Measurement, share: float) -> None:
        """Record a candidate's measurement on the first ``share`` of the data (a full-data result at share 1)."""


MIN_FACTOR = 1.5  # a smaller growth per stage buys little and multiplies the stages (and their decisions)


@dataclass(frozen=True)
class HalvingSettings:
    """Start at ``start`` of the data, grow by ``factor`` each stage, drop at one-sided ``level`` (and, with
    ``tolerance`` > 0, what cannot add that share of the front's hypervolume); ``seed`` picks the items.
    ``sizes`` are the evaluators' item counts (empty: unknown): a stage must add items to every one of them."""

    start: float = 0.125
    factor: float = 2.0
    level: float = NOISE_LEVEL
    seed: int = 0
    tolerance: float = NEGLIGIBLE_GAIN
    sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (0.0 < self.start < 1.0 and self.factor >= MIN_FACTOR):
            raise TaxcutError(
                f"halving needs 0 < start < 1 and factor >= {MIN_FACTOR}, got start {self.start} "
                f"and factor {self.factor}"
            )

    def shares(self) -> list[float]:
        """The stages' shares, ending at the whole data: 1/8, 1/4, 1/2, 1 by default. A share that would add no
        item to some evaluator (or leave none for the last stage) is skipped, so no stage measures an empty part
        and there are at most as many stages as the smallest evaluator has items."""
        shares, share = [], self.start
        while share < 1.0 - 1e-9:
            rounded = round(share, 6)
            if new_items(shares[-1] if shares else 0.0, rounded, self.sizes) and new_items(rounded, 1.0, self.sizes):
                shares.append(rounded)
            share *= self.factor
        return shares + [1.0]


def new_items(start: float, stop: float, sizes: Iterable[int]) -> bool:
    """Does the part ``[start, stop)`` of the data hold at least one item of every evaluator (of ``sizes`` items)?"""
    return stop > start and all(share_count(stop, size) > share_count(start, size) for size in sizes)


@dataclass
class HalvingOutcome:
    """Which candidates were measured in full, which were dropped (and at which share), and every candidate's last
    estimate (full data, or the stage it was dropped at)."""

    finished: list[Candidate] = field(default_factory=list)
    dropped: dict[str, float] = field(default_factory=dict)
    points: dict[str, NoisyPoint] = field(default_factory=dict)


def stage_context(context: str, share: float, seed: int) -> str:
    """The context of a stage's results: the sweep's, the share and the items' seed (share 1 is the sweep's own)."""
    if share >= 1.0:
        return context
    return hashlib.sha256(f"{context}:share={share:g}:seed={seed}".encode()).hexdigest()[:16]


def noisy_point(result: EvaluationResult, baseline: EvaluationResult, *, cautious: bool = False) -> NoisyPoint:
    """A result's reward and tax (against ``baseline``) with their standard errors, the tax's paired with the
    baseline's per-item scores, and the per-item scores that pair comparisons (see :mod:`taxcut.sweep.noise`).
    ``cautious``: ``result`` is a stage's (few items), its errors the cautious ones."""
    reward = result.reward
    counted = tuple(name for name in result.primary if name in baseline.primary)
    return NoisyPoint(
        reward=reward.reward if reward else float("nan"),
        tax=tax(result.primary, baseline.primary, result.directions),
        reward_stderr=reward.reward_stderr if reward else 0.0,
        tax_stderr=paired_tax_stderr(
            result.primary_stderr or {},
            counted,
            result.items.tasks if result.items else {},
            baseline.items.tasks if baseline.items else {},
            cautious=cautious,
        ),
        items=result.items,
        baseline=baseline.items,
        tasks=counted,
    )


def successive_halving(
    candidates: Sequence[Candidate],
    baseline: Candidate,
    evaluate: EvaluateBatch,
    book: StageBook,
    settings: HalvingSettings = HalvingSettings(),
    incumbents: Sequence[NoisyPoint] = (),
    keep: Collection[str] = (),
) -> HalvingOutcome:
    """Measure ``candidates`` by successive halving (the module's rule) and return what happened.

    ``baseline`` is the SFT model: measured at every stage, never dropped, and a rival at every stage. ``incumbents``
    (points measured in full elsewhere, taxed against the full baseline) and the candidates already measured in full
    without stages count as dominators at every stage. Candidates whose ids are in ``keep`` (the aligned model) are,
    like the baseline, never dropped. Stages already in ``book`` are not measured again, and a
    candidate that finished an earlier run of this halving takes part in each stage with its stage record, so a
    resumed run makes the decisions the first one made.
    """
    unique = {c.id: c for c in [baseline, *candidates]}
    protected = {baseline.id, *keep}
    outcome = HalvingOutcome()
    full_baseline = book.full(baseline.id)
    done = {cid: book.full(cid) for cid in unique}
    champions = list(incumbents)
    if full_baseline is not None:
        for cid, result in done.items():
            if result is not None:
                outcome.points[cid] = noisy_point(result, full_baseline)
                if cid != baseline.id and not book.shares(cid):
                    champions.append(outcome.points[cid])
    finished = [c for c in unique.values() if done[c.id] is not None and c.id != baseline.id and book.shares(c.id)]
    survivors = [c for c in unique.values() if done[c.id] is None]
    if not survivors:
        outcome.finished = list(unique.values())
        return outcome
    for share in settings.shares()[:-1]:
        staged = _measure_stage([*survivors, baseline], share, evaluate, book, settings.seed, settings.sizes)
        base = staged[baseline.id].result(cautious=True)
        points = {c.id: noisy_point(staged[c.id].result(cautious=True), base, cautious=True) for c in survivors}
        outcome.points.update(points)
        rivals = {**points, baseline.id: noisy_point(base, base, cautious=True)}
        for candidate in finished:  # measured in full by an earlier run: its stage, as then
            if share in book.shares(candidate.id):
                rivals[candidate.id] = noisy_point(
                    book.stage(candidate.id, share).result(cautious=True), base, cautious=True
                )
        kept = []
        for candidate in survivors:
            others = [p for cid, p in rivals.items() if cid != candidate.id] + champions
            if candidate.id not in protected and any(
                dominates_beyond_noise(r, points[candidate.id], settings.level, cautious=True) for r in others
            ):
                outcome.dropped[candidate.id] = share
            else:
                kept.append(candidate)
        if settings.tolerance > 0:
            kept = _drop_negligible(kept, protected, rivals, champions, settings, share, outcome)
        survivors = kept
    _measure_stage(survivors, 1.0, evaluate, book, settings.seed, settings.sizes)
    full_baseline = book.full(baseline.id)
    for candidate in unique.values():
        if candidate.id not in outcome.dropped:
            outcome.finished.append(candidate)
            outcome.points[candidate.id] = noisy_point(book.full(candidate.id), full_baseline)
    return outcome


def best_case_gain(
    point: NoisyPoint, others: Sequence[NoisyPoint], level: float = NOISE_LEVEL, *, cautious: bool = False
) -> float:
    """The share of the front's hypervolume that ``point`` adds at best: its corner ``(reward + z se_r, tax -
    z se_t)`` added to ``others`` (as measured), over the hypervolume of ``others`` with that corner, both from the
    nadir of ``others`` and ``point``. An infinite error gives 1 (anything is possible); no front to compare gives 1.

    A rival measured on the same items (:mod:`taxcut.sweep.noise`'s pairing) is set against the corner by the
    error of its *difference* to ``point`` instead: moved by ``z (se_own - se_paired)`` on each axis that pairs,
    so that what separates the two is the paired error, not ``point``'s own (``cautious``: the few-items paired
    error, :func:`taxcut.evaluation.paired.cautious_paired_error`)."""
    z = z_value(level)
    corner = (point.reward + z * point.reward_stderr, point.tax - z * point.tax_stderr)
    if not all(math.isfinite(v) for v in corner):
        return 1.0
    measured = [p for p in others if math.isfinite(p.reward) and math.isfinite(p.tax)]
    everything = [*((p.reward, p.tax) for p in measured), (point.reward, point.tax)]
    front = [
        (r, t)
        for r, t in (_as_paired(p, point, z, cautious) for p in measured)
        if math.isfinite(r) and math.isfinite(t)
    ]
    reference = (min(r for r, _ in everything), max(t for _, t in everything))
    whole = hypervolume([*front, corner], reference)
    if whole <= 0.0:
        return 1.0
    return (whole - hypervolume(front, reference)) / whole


def _as_paired(rival: NoisyPoint, point: NoisyPoint, z: float, cautious: bool) -> tuple[float, float]:
    """``rival``'s (reward, tax) as :func:`best_case_gain` sets it against ``point``'s corner: moved on each axis
    where the two pair by ``z`` times (``point``'s own error - the paired error of their difference); an infinite
    paired error moves it out of the way."""
    reward_error = paired_reward_error(rival, point, cautious)
    tax_error = paired_tax_error(rival, point, cautious)
    reward = rival.reward if reward_error is None else rival.reward + z * (point.reward_stderr - reward_error)
    taxed = rival.tax if tax_error is None else rival.tax - z * (point.tax_stderr - tax_error)
    return reward, taxed


def _drop_negligible(
    survivors: list[Candidate],
    protected: Collection[str],
    rivals: dict[str, NoisyPoint],
    champions: Sequence[NoisyPoint],
    settings: HalvingSettings,
    share: float,
    outcome: HalvingOutcome,
) -> list[Candidate]:
    """Drop, one at a time, the survivor whose best case adds least to the front while that is under
    ``settings.tolerance`` (the module's rule); the others are measured against the survivors left."""
    survivors = list(survivors)
    standing = {cid: p for cid, p in rivals.items() if cid not in outcome.dropped}
    while True:
        gains = {}
        for candidate in survivors:
            if candidate.id in protected:
                continue
            others = [p for cid, p in standing.items() if cid != candidate.id] + list(champions)
            gains[candidate.id] = best_case_gain(standing[candidate.id], others, settings.level, cautious=True)
        if not gains:
            return survivors
        weakest = min(gains, key=lambda cid: (gains[cid], cid))
        if gains[weakest] >= settings.tolerance:
            return survivors
        outcome.dropped[weakest] = share
        del standing[weakest]
        survivors = [c for c in survivors if c.id != weakest]


def _measure_stage(
    candidates: Sequence[Candidate],
    share: float,
    evaluate: EvaluateBatch,
    book: StageBook,
    seed: int,
    sizes: Sequence[int] = (),
) -> dict[str, Measurement]:
    """Every candidate's measurement on the first ``share`` of the data: from the book, or grown from its largest
    earlier stage by the items it has not seen, recorded as each finishes."""
    found: dict[str, Measurement] = {}
    todo: dict[float, list[Candidate]] = {}  # by the share each one starts from
    for candidate in {c.id: c for c in candidates}.values():
        if share >= 1.0 and book.full(candidate.id) is not None:
            continue
        measured = book.stage(candidate.id, share) if share < 1.0 else None
        if measured is not None:
            found[candidate.id] = measured
            continue
        earlier = [s for s in book.shares(candidate.id) if new_items(s, share, sizes)]  # never an empty part
        todo.setdefault(max(earlier, default=0.0), []).append(candidate)
    for start, group in sorted(todo.items()):
        for candidate, measurement in evaluate(group, DataPart(start, share, seed)):
            if start > 0.0:
                measurement = book.stage(candidate.id, start).merge(measurement)
            book.add(candidate, measurement, share)
            found[candidate.id] = measurement
    return found
