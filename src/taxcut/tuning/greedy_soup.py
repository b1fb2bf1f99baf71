"""Greedy soups (Wortsman et al. 2022, "Model soups"): rank the ingredients by a held-out score, then add each to the
soup only if the soup's score does not drop. Scored with the sweep's evaluators; the soup is a uniform average.

Two copies of the weights stay in memory: the live soup and the running sum of the accepted ingredients; each
trial reads the candidate ingredient tensor by tensor from its folder (and again if it is accepted). The
ingredients are scored alone on the executor's workers (in parallel on Ray); the greedy trials, one after the
other by nature, run on one worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer, pick_device
from taxcut.evaluation.result import EvaluationResult
from taxcut.evaluation.suite import EvaluationSuite
from taxcut.execution import Executor, LocalExecutor
from taxcut.io.parameters import architecture_mismatch, checkpoint_names, read_parameters
from taxcut.spec.evaluation import EvaluationSpec


@dataclass
class SoupSelection:
    """What the greedy selection kept, and what it measured on the way."""

    chosen: list[Path]
    individual: dict[str, float] = field(default_factory=dict)  # folder -> score alone
    trials: list[tuple[str, float, bool]] = field(default_factory=list)  # (folder, soup score with it, accepted)


def score_of(result: EvaluationResult, score: str) -> float:
    """``reward``, ``tasks`` (the mean primary score), ``TASK`` (its primary metric) or ``TASK.METRIC`` from an
    evaluation result, oriented so that higher is better: lower-is-better scores (nll, perplexity) are negated."""
    if score == "reward":
        if result.reward is None:
            raise TaxcutError("score 'reward': the evaluation has no 'reward' section")
        return result.reward.reward
    if score == "tasks":
        if not result.primary:
            raise TaxcutError("score 'tasks': the evaluation has no 'tasks'")
        values = [v if result.higher_is_better(t) else -v for t, v in result.primary.items()]
        return sum(values) / len(values)
    task, _, metric = score.partition(".")
    if task not in result.tasks:
        raise TaxcutError(f"score {score!r}: no task {task!r} in the evaluation ({', '.join(result.tasks)})")
    if metric and metric not in result.tasks[task]:
        raise TaxcutError(f"score {score!r}: task {task!r} has no metric {metric!r} ({', '.join(result.tasks[task])})")
    value = result.tasks[task][metric] if metric else result.primary[task]
    return value if result.higher_is_better(task) else -value


def _check_score(score: str, evaluation: EvaluationSpec) -> None:
    """Refuse a score the evaluation cannot give before any model is loaded (metrics are known only once run)."""
    names = [task.name for task in evaluation.tasks]
    if score == "reward" and evaluation.reward is None:
        raise TaxcutError("score 'reward': the evaluation has no 'reward' section")
    if score not in ("reward", "tasks") and score.partition(".")[0] not in names:
        raise TaxcutError(
            f"score {score!r}: no task {score.partition('.')[0]!r} in the evaluation "
            f"({', '.join(names) or 'it has no tasks'})"
        )


def greedy_soup(
    models: list[Path], evaluation: EvaluationSpec, score: str, device: str = "auto", executor: Executor | None = None
) -> SoupSelection:
    _check_score(score, evaluation)
    executor = executor or LocalExecutor()
    work = SoupScoring(Path(models[0]), evaluation, score, device)
    alone = {str(folder): value for folder, value in executor.map(work, [Path(m) for m in models])}
    outcome = SoupSelection([], individual={str(folder): alone[str(folder)] for folder in models})
    ranked = sorted(models, key=lambda f: -outcome.individual[str(f)])
    ((_, (outcome.chosen, outcome.trials)),) = executor.map(work, [Trials(tuple(ranked), alone[str(ranked[0])])])
    return outcome


@dataclass(frozen=True)
class Trials:
    """The greedy trials over the ``ranked`` ingredients, starting from the best one's score ``best``."""

    ranked: tuple[Path, ...]
    best: float


@dataclass(frozen=True)
class SoupScoring:
    """A greedy soup's scoring on an executor's worker: the live model (the first ingredient's architecture, float32)
    and the suite; an item is an ingredient folder (its score alone) or :class:`Trials` (the chosen folders and the
    trials)."""

    first: Path
    evaluation: EvaluationSpec
    score: str
    device: str = "auto"

    def setup(self) -> Callable:
        resolved = pick_device(self.device)
        suite = EvaluationSuite.from_spec(self.evaluation, device=resolved)
        live = load_causal_lm(self.first, device=resolved, dtype="float32")
        tokenizer = load_tokenizer(self.first)
        parameters = dict(live.named_parameters())
        stored = checkpoint_names(live)

        def tensors(folder: Path):
            """(parameter name, float32 tensor) of an ingredient, one tensor at a time."""
            for name, tensor in read_parameters(folder, parameters, stored, "ingredient"):
                if tensor is None:
                    raise architecture_mismatch(folder, stored[name])
                yield name, tensor.float()

        def score_now() -> float:
            return score_of(suite.evaluate(live, tokenizer), self.score)

        @torch.no_grad()
        def alone(folder: Path) -> float:
            for name, tensor in tensors(folder):
                parameters[name].copy_(tensor)
            return score_now()

        @torch.no_grad()
        def trials(item: Trials) -> tuple[list[Path], list[tuple[str, float, bool]]]:
            ranked, best = item.ranked, item.best
            total = {name: tensor for name, tensor in tensors(ranked[0])}  # the running sum of the soup
            chosen, tried = [ranked[0]], []
            for folder in ranked[1:]:
                count = len(chosen) + 1
                for name, tensor in tensors(folder):  # the trial soup, written straight into the live model
                    parameters[name].copy_((total[name] + tensor) / count)
                value = score_now()
                accepted = value >= best
                tried.append((str(folder), value, accepted))
                if accepted:
                    for name, tensor in tensors(folder):  # read again rather than hold a third copy
                        total[name] += tensor
                    best = value
                    chosen.append(folder)
            return chosen, tried

        return lambda item: trials(item) if isinstance(item, Trials) else alone(item)
