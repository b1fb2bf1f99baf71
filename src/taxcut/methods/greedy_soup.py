"""Greedy soups (Wortsman et al. 2022, "Model soups"): the uniform average of the ingredients that a greedy
selection keeps. The selection (:mod:`taxcut.tuning.greedy_soup`) runs as this method's prepare step: the
ingredients are ranked by a held-out score, and each is added only if the soup's score does not drop."""

from __future__ import annotations

from typing import Any

from taxcut.errors import TaxcutError
from taxcut.execution import open_executor
from taxcut.methods.averaging import weighted_average
from taxcut.methods.parameters import MethodParameters
from taxcut.methods.registry import MergeMethod, register
from taxcut.methods.request import ModelInput
from taxcut.spec.execution import ExecutorSpec


class GreedySoupParameters(MethodParameters):
    score: str  # reward | tasks | TASK | TASK.METRIC of the spec's `evaluation` (higher is better, losses negated)
    device: str = "auto"
    executor: ExecutorSpec | None = None  # where the ingredients are scored (in-process unless executor.ray)
    greedy: dict[str, Any] | None = None  # what the selection measured (written by the prepare step)


@register
class GreedySoup(MergeMethod):
    """The uniform average of the ingredients a greedy selection kept."""

    name = "greedy_soup"
    paper = "Wortsman et al. 2022, 'Model soups' (greedy soup)"
    Parameters = GreedySoupParameters
    min_models, elementwise = 2, True

    def validate(self, request) -> None:
        if request.evaluation is None:
            raise TaxcutError(
                "a greedy soup needs an 'evaluation' section (like a sweep's) to score its "
                "ingredients, and parameters.score (reward, tasks, TASK or TASK.METRIC)"
            )

    def prepare(self, request, log):
        from taxcut.tuning.greedy_soup import greedy_soup  # loads transformers: only when the selection runs

        parameters = request.parameters
        with open_executor(parameters.executor) as executor:
            soup = greedy_soup(
                [m.path for m in request.models],
                request.evaluation,
                parameters.score,
                device=parameters.device,
                executor=executor,
            )
        record = {"individual": soup.individual, "trials": [list(t) for t in soup.trials]}
        chosen = [ModelInput(f"model {i + 1}", path) for i, path in enumerate(soup.chosen)]
        return request.with_models(chosen).replace(parameters=parameters.model_copy(update={"greedy": record}))

    def merge(self, models, base, weights, parameters, site):
        return weighted_average(models, [1.0] * len(models))
