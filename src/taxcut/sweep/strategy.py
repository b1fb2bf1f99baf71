"""How a sweep spends its evaluation: which candidates (the fixed grid or the adaptive grid) and on how much data
(in full, or by successive halving), through one batch-evaluating function.

- ``candidates: {strategy: grid}`` (the default) evaluates the grid as given; ``strategy: adaptive`` runs
  :mod:`taxcut.sweep.adaptive` over the MA family, each block or layer pattern and each LiNeS depth profile as a
  profile family, and HMA (fitted
  at the ratios it picks), with the checkpoints and ratios files as fixed points.
- ``evaluation: {fidelity: full}`` (the default) measures each candidate on all the data; ``fidelity: halving``
  runs :mod:`taxcut.sweep.halving` on every batch.

The runner hands in ``evaluate``, the one function that measures candidates on a part of the data (today on the
resident model, one after another); everything here goes through it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from tqdm.auto import tqdm

from taxcut.evaluation.measurement import Measurement
from taxcut.evaluation.result import EvaluationResult
from taxcut.evaluation.subset import FULL, DataPart
from taxcut.evaluation.suite import EvaluationSuite
from taxcut.spec.candidates import Candidate, expand_grid, ma_candidate, profile_candidate
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.adaptive import AdaptiveOutcome, Family, adaptive_search, lines_at, lines_mean, profile_at
from taxcut.sweep.cost import CostAccount, cost_account
from taxcut.sweep.halving import EvaluateBatch, HalvingSettings, noisy_point, stage_context, successive_halving
from taxcut.sweep.noise import NoisyPoint
from taxcut.sweep.results import ResultRecord, ResultsStore

MakeRecord = Callable[[Candidate, EvaluationResult, str], ResultRecord]
"""A candidate's result as a record of the results file under a context (the runner's)."""


def uses_strategy(spec: SweepSpec) -> bool:
    """Whether the sweep spends its evaluation other than on the whole grid in full."""
    return spec.candidates.strategy == "adaptive" or spec.evaluation.fidelity == "halving"


def item_counts(suite: EvaluationSuite) -> dict[str, int]:
    """How many items each evaluator that halving measures in parts has (what a stage must add to)."""
    counts = {"the reward's prompts": len(suite.reward.records)} if suite.reward is not None else {}
    counts.update({f"task '{task.name}'": len(task.records) for task in suite.tasks if hasattr(task, "measure")})
    return counts


def measure_part(suite: EvaluationSuite, model, tokenizer, part: DataPart) -> Measurement:
    """A worker's measure for the strategies: the resident model's statistics on a part of the data."""
    return suite.measure(model, tokenizer, part)


def sweep_cost(
    candidates: Iterable[Candidate], latest: dict[str, ResultRecord], book: ResultsBook | None = None
) -> CostAccount:
    """The cost account (:mod:`taxcut.sweep.cost`) of a sweep's candidates: each one's full-data result, or the
    last stage halving measured it on."""
    entries = []
    for candidate_id in dict.fromkeys(c.id for c in candidates):
        record = latest.get(candidate_id) or (book.last(candidate_id) if book is not None else None)
        if record is not None:
            entries.append((record.result.cost, record.share))
    return cost_account(entries)


class ResultsBook:
    """The sweep's results file and the one owner of what it holds for this sweep: each candidate's newest
    full-data record under the sweep's context (``latest``) and halving's stages, which live under contexts of
    their own. Every result is written through :meth:`add_result` or :meth:`add`; others only read."""

    def __init__(self, store: ResultsStore, context: str, make_record: MakeRecord, seed: int = 0):
        self.store, self.context, self.make_record, self.seed = store, context, make_record, seed
        records = store.records()
        self.latest: dict[str, ResultRecord] = {r.candidate_id: r for r in records if r.context == context}
        # full-data results measured under other settings: kept in the file, not used
        others = {r.candidate_id for r in records if r.share >= 1.0 and r.context != context}
        self.stale = len(others - set(self.latest))
        self.stages: dict[tuple[str, float], ResultRecord] = {}
        contexts: dict[float, str] = {}
        for record in records:
            if record.share >= 1.0 or record.stats is None:
                continue
            expected = contexts.setdefault(record.share, stage_context(context, record.share, seed))
            if record.context == expected:
                self.stages[(record.candidate_id, record.share)] = record

    def full(self, candidate_id: str) -> EvaluationResult | None:
        record = self.latest.get(candidate_id)
        return record.result if record is not None else None

    def stage(self, candidate_id: str, share: float) -> Measurement | None:
        record = self.stages.get((candidate_id, share))
        return Measurement.from_json(record.stats) if record is not None else None

    def shares(self, candidate_id: str) -> list[float]:
        return sorted(share for cid, share in self.stages if cid == candidate_id)

    def add_result(self, candidate: Candidate, result: EvaluationResult) -> ResultRecord:
        """A full-data result, appended to the file: the candidate's newest."""
        record = self.make_record(candidate, result, self.context)
        self.store.append(record)
        self.latest[candidate.id] = record
        return record

    def add(self, candidate: Candidate, measurement: Measurement, share: float) -> None:
        """A measurement on ``share`` of the data: a stage of halving, or (share 1) a full-data result."""
        record = self.make_record(candidate, measurement.result(), stage_context(self.context, share, self.seed))
        record = replace(record, share=share, stats=measurement.to_json() if share < 1.0 else None)
        self.store.append(record)
        if share < 1.0:
            self.stages[(candidate.id, share)] = record
        else:
            self.latest[candidate.id] = record

    def last(self, candidate_id: str) -> ResultRecord | None:
        """The candidate's full-data record, or else its largest stage."""
        if candidate_id in self.latest:
            return self.latest[candidate_id]
        shares = self.shares(candidate_id)
        return self.stages[(candidate_id, shares[-1])] if shares else None


@dataclass
class StrategyReport:
    """What the strategy did: the candidates it evaluated (in order), those halving dropped (id -> share), and
    its rounds of the adaptive grid."""

    candidates: list[Candidate] = field(default_factory=list)
    dropped: dict[str, float] = field(default_factory=dict)
    rounds: int = 0


class SweepStrategy:
    """Measures a sweep's candidates as its spec says (the module's rules)."""

    def __init__(
        self,
        spec: SweepSpec,
        book: ResultsBook,
        evaluate: EvaluateBatch,
        *,
        check: Callable[[Sequence[Candidate]], None] = lambda _: None,
        progress: bool | None = None,
        items: dict[str, int] | None = None,
    ):
        """``items``: each evaluator's item count (:func:`item_counts`), so that no halving stage is empty."""
        self.spec, self.book, self.evaluate, self.check, self.progress = spec, book, evaluate, check, progress
        self.baseline = expand_grid(spec.candidates)[0]  # the SFT model
        self.aligned = ma_candidate(1.0, [rule.model_dump(exclude_none=True) for rule in spec.candidates.rules])
        halving = spec.evaluation.halving
        self.halving = (
            HalvingSettings(
                start=halving.start,
                factor=halving.factor,
                level=halving.level,
                seed=halving.seed,
                tolerance=halving.tolerance,
                sizes=tuple((items or {}).values()),
            )
            if spec.evaluation.fidelity == "halving"
            else None
        )
        if self.halving is not None and items and len(self.halving.shares()) == 1:
            smallest = min(items, key=items.get)
            print(
                f"note: evaluation.halving: {smallest} has {items[smallest]} item(s), too few to measure on part "
                "of them from 'start'; every candidate is measured on all the data",
                file=sys.stderr,
            )
        self.report = StrategyReport()

    @property
    def adaptive(self) -> bool:
        return self.spec.candidates.strategy == "adaptive"

    def run(self) -> list[Candidate]:
        """Evaluate the grid (fixed or adaptive); return its candidates, the SFT model first."""
        if not self.adaptive:
            candidates = expand_grid(self.spec.candidates)
            self.measure(candidates)
            return candidates
        grid = self.spec.candidates
        families, fixed = self.families()
        outcome: AdaptiveOutcome = adaptive_search(
            families,
            self.measure,
            budget=grid.budget,
            fixed=fixed,
            resolution=grid.resolution,
            tolerance=grid.tolerance,
            batch=grid.batch,
            spent=self.spent,
        )
        self.report.rounds = outcome.rounds
        return [self.baseline] + [c for c in outcome.candidates if c.id != self.baseline.id]

    def measure(self, candidates: Sequence[Candidate]) -> dict[str, NoisyPoint]:
        """Measure ``candidates`` (in full or by halving); each one's point, its tax against the SFT model."""
        candidates = list({c.id: c for c in candidates}.values())
        self.report.candidates += [c for c in candidates if c.id not in {k.id for k in self.report.candidates}]
        self.check([c for c in candidates if self.book.full(c.id) is None])
        if self.halving is not None:
            incumbents = self._incumbents(candidates)
            outcome = successive_halving(
                candidates, self.baseline, self._evaluate, self.book, self.halving, incumbents, keep={self.aligned.id}
            )
            self.report.dropped.update(outcome.dropped)
            return {c.id: outcome.points[c.id] for c in candidates if c.id in outcome.points}
        todo = [c for c in ([self.baseline] + candidates) if self.book.full(c.id) is None]
        todo = list({c.id: c for c in todo}.values())
        for candidate, measurement in self._evaluate(todo, FULL):
            self.book.add(candidate, measurement, 1.0)
        baseline = self.book.full(self.baseline.id)
        return {c.id: noisy_point(self.book.full(c.id), baseline) for c in candidates}

    def spent(self, candidates: Sequence[Candidate]) -> float:
        """The evaluation spent on ``candidates``, in full evaluations: the share of the data of each one's last
        result (1 for a full-data result, the largest stage for one halving dropped)."""
        last = (self.book.last(cid) for cid in {c.id for c in candidates})
        return sum(record.share for record in last if record is not None)

    def families(self) -> tuple[list[Family], list[Candidate]]:
        """The adaptive grid's families (MA, each block or layer pattern, each depth profile, HMA) and its fixed
        candidates (checkpoints, ratios files)."""
        grid = self.spec.candidates
        rules = [rule.model_dump(exclude_none=True) for rule in grid.rules]
        ends = {0.0: self.baseline, 1.0: self.aligned}

        def path(make: Callable[[float], Candidate]) -> Callable[[float], Candidate]:
            return lambda a: ends[a] if a in ends else make(a)

        ma_start = tuple(grid.grid) if "grid" in grid.model_fields_set else (0.5,)
        families = [Family("MA", path(lambda a: ma_candidate(a, rules)), ma_start)]
        for pattern in grid.block_patterns:
            families.append(
                Family(
                    f"blocks {_short(pattern)}",
                    path(
                        lambda a, p=pattern: Candidate(
                            label=f"blocks {_short(profile_at(p, a))}",
                            kind="blocks",
                            alphas=profile_at(p, a),
                            block_bounds=grid.block_bounds,
                            rules=rules,
                        )
                    ),
                    (sum(pattern) / len(pattern),),
                )
            )
        for pattern in grid.layer_patterns:
            families.append(
                Family(
                    f"layers {_short(pattern)}",
                    path(
                        lambda a, p=pattern: Candidate(
                            label=f"layers {_short(profile_at(p, a))}",
                            kind="layers",
                            layer_alphas=profile_at(p, a),
                            rules=rules,
                        )
                    ),
                    (sum(pattern) / len(pattern),),
                )
            )
        for profile in grid.all_profiles():  # a depth profile: a path at its shape, as a block pattern's
            families.append(
                Family(
                    f"LiNeS {_short(profile)}",
                    path(lambda a, p=profile: profile_candidate(lines_at(p, a), rules)),
                    (lines_mean(profile),),
                )
            )
        if grid.hma is not None:
            start = tuple(grid.hma.mean_alphas) if "mean_alphas" in grid.hma.model_fields_set else (0.5,)
            families.append(Family("HMA", path(self._hma_at), start))
        fixed = [
            c
            for c in expand_grid(
                grid.model_copy(
                    update={
                        "grid": [],
                        "block_patterns": [],
                        "layer_patterns": [],
                        "profiles": [],
                        "profile_grid": None,
                    }
                )
            )[1:]
        ]
        return families, fixed

    def _hma_at(self, a: float) -> Candidate:
        from taxcut.hma.candidates import hma_candidates  # the HMA fit loads torch models

        hma = self.spec.candidates.hma.model_copy(update={"mean_alphas": [a]})
        spec = self.spec.model_copy(update={"candidates": self.spec.candidates.model_copy(update={"hma": hma})})
        return next(c for c in hma_candidates(spec, log=lambda *_: None) if c.kind == "HMA")  # the first eps

    def _incumbents(self, candidates: Sequence[Candidate]) -> list[NoisyPoint]:
        """Fully measured candidates of earlier batches: they can drop a new candidate at any stage."""
        baseline = self.book.full(self.baseline.id)
        if baseline is None:
            return []
        mine = {c.id for c in candidates}
        return [
            noisy_point(self.book.full(c.id), baseline)
            for c in self.report.candidates
            if c.id not in mine and self.book.full(c.id) is not None
        ]

    def _evaluate(self, candidates: Sequence[Candidate], part=FULL) -> Iterable[tuple[Candidate, Measurement]]:
        if not candidates:
            return
        share = "" if part.full else f" [{part.start:g}, {part.stop:g})"
        bar = tqdm(
            total=len(candidates),
            desc=f"sweep{share}",
            unit="candidate",
            disable=None if self.progress is None else not self.progress,
        )
        try:
            for candidate, measurement in self.evaluate(candidates, part):
                bar.set_postfix_str(candidate.label)
                bar.update()
                yield candidate, measurement
        finally:
            bar.close()


def _short(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
