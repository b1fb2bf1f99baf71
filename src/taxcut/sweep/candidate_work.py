"""The sweep on an executor (:mod:`taxcut.execution`): the one function that evaluates a batch of candidates.

Each worker holds one :class:`~taxcut.sweep.resident.ResidentModel` (the SFT model plus the two source copies) and
the evaluation suite on its device, and evaluates the candidates it is handed; in-process, that is this process
and the suite the sweep already built. :class:`CandidateBatches` is what the sweep's strategies call: it yields
``(candidate, result)`` as each candidate finishes, in any order, and the caller records each one -- so the
process that runs the sweep stays the only writer of its results file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from taxcut.errors import TaxcutError
from taxcut.evaluation.loading import pick_device
from taxcut.evaluation.subset import FULL, DataPart
from taxcut.evaluation.suite import EvaluationSuite
from taxcut.execution import Executor
from taxcut.spec.candidates import Candidate
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.resident import ResidentModel


def evaluate_in_full(suite: EvaluationSuite, model, tokenizer, part: DataPart) -> Any:
    """A candidate's evaluation on all of the data (the default measure)."""
    if not part.full:
        raise TaxcutError(f"this sweep's measure evaluates all of the data, not the part {part}")
    return suite.evaluate(model, tokenizer)


@dataclass(eq=False)
class CandidateEvaluation:
    """The sweep's work: a resident model and the suite on the worker's device; an item is ``(candidate, part)``.

    ``measure`` (a module-level function, sent by reference) evaluates the resident model on a part of the data.
    ``suite``: the sweep's own suite, reused in this process and never sent to another one.
    """

    spec: SweepSpec
    measure: Callable[[EvaluationSuite, Any, Any, DataPart], Any] = evaluate_in_full
    suite: EvaluationSuite | None = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CandidateEvaluation) and (self.spec, self.measure) == (other.spec, other.measure)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "suite": None}

    def setup(self) -> Callable[[tuple[Candidate, DataPart]], Any]:
        spec = self.spec
        device = pick_device(spec.device)
        suite = self.suite or EvaluationSuite.from_spec(spec.evaluation, device=device)
        resident = ResidentModel(
            spec.sft,
            spec.aligned,
            device=device,
            dtype=spec.dtype,
            extrapolate=spec.extrapolate,
            sources=spec.executor.sources,
            allow_tokenizer_mismatch=spec.allow_tokenizer_mismatch,
        )

        def evaluate(item: tuple[Candidate, DataPart]):
            candidate, part = item
            resident.apply(candidate)
            try:
                return self.measure(suite, resident.model, resident.tokenizer, part)
            except TaxcutError as exc:
                raise TaxcutError(f"candidate {candidate.label} ({candidate.id}): {exc}") from None

        return evaluate


class CandidateBatches:
    """Evaluates batches of candidates on an executor's workers: ``batches(candidates, part)`` yields
    ``(candidate, result)`` as each finishes (the strategies' ``EvaluateBatch``)."""

    def __init__(self, executor: Executor, work: CandidateEvaluation):
        self.executor, self.work = executor, work

    def __call__(self, candidates: Sequence[Candidate], part: DataPart = FULL) -> Iterator[tuple[Candidate, Any]]:
        for (candidate, _), result in self.executor.map(self.work, [(c, part) for c in candidates]):
            yield candidate, result
