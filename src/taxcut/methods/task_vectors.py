"""Task-vector methods relative to a base model, on peft's merge utilities: task arithmetic, TIES, DARE.

The four methods compared in "What Matters for Model Merging at Scale?" (Yadav et al. 2024). Task vectors are
``theta_i - theta_base``; the merged model is ``theta_base + lambda * merge(task vectors)``. DARE is seeded per
tensor (``seed`` and the tensor's name), so a merge is reproducible.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
from pydantic import Field

from taxcut.errors import TaxcutError
from taxcut.methods.parameters import MethodParameters, per_block
from taxcut.methods.registry import MergeMethod, register

Fraction = per_block("a number in (0, 1]", lambda v: 0 < v <= 1)
Scale = per_block("a number")


def task_vectors(models: list[torch.Tensor], base: torch.Tensor) -> list[torch.Tensor]:
    return [tensor - base for tensor in models]


def _weights(weights: list[float]) -> torch.Tensor:
    return torch.tensor(weights, dtype=torch.float32)


def tensor_seed(seed: int, name: str) -> int:
    """The random seed of one tensor: the spec's ``seed`` and the tensor's name."""
    return seed * 1_000_003 + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


class TaskArithmeticParameters(MethodParameters):
    lambda_: Scale = Field(1.0, alias="lambda")  # the scale of the summed task vectors


class TiesParameters(TaskArithmeticParameters):
    density: Fraction = 0.2  # the share of each task vector's largest magnitudes kept
    majority_sign_method: Literal["total", "frequency"] = "total"


class DareParameters(TaskArithmeticParameters):
    density: Fraction = 0.5  # the probability of keeping each task-vector entry
    seed: int = 0


class DareTiesParameters(DareParameters):
    majority_sign_method: Literal["total", "frequency"] = "total"


class _TaskVectorMethod(MergeMethod):
    needs_base = True

    def mergekit(self, plan) -> dict:
        parameters = plan.request.parameters
        per_model = {"density": parameters.density} if hasattr(parameters, "density") else {}
        return {"merge_method": self.name, "parameters": {"lambda": parameters.lambda_}, "model_parameters": per_model}


@register
class TaskArithmetic(_TaskVectorMethod):
    """``theta_base + lambda * sum_i w_i * (theta_i - theta_base)``."""

    name = "task_arithmetic"
    paper = "Ilharco et al. 2023, 'Editing Models with Task Arithmetic'"
    Parameters = TaskArithmeticParameters
    elementwise = True

    def merge(self, models, base, weights, parameters, site):
        from peft.utils.merge_utils import task_arithmetic  # peft is slow to import: only when a tensor is merged

        return base + parameters.lambda_ * task_arithmetic(task_vectors(models, base), _weights(weights))


class _SignElection(_TaskVectorMethod):
    def mergekit(self, plan) -> dict:
        if any(m.weight != 1.0 for m in plan.request.models):
            raise TaxcutError(f"weighted {self.name}: taxcut (peft) divides by the number of agreeing models, "
                              "mergekit by their weight sum; only equal weights (1.0) export exactly")
        return super().mergekit(plan)


@register
class Ties(_SignElection):
    """TIES: trim each task vector to its top-``density`` magnitudes, elect a sign per entry, average the kept
    values that agree with it."""

    name = "ties"
    paper = "Yadav et al. 2023, 'TIES-Merging: Resolving Interference When Merging Models'"
    Parameters = TiesParameters

    def merge(self, models, base, weights, parameters, site):
        from peft.utils.merge_utils import ties  # as above

        merged = ties(task_vectors(models, base), _weights(weights), density=parameters.density,
                      majority_sign_method=parameters.majority_sign_method)
        return base + parameters.lambda_ * merged


@register
class DareLinear(_TaskVectorMethod):
    """DARE: drop each task-vector entry with probability ``1 - density``, rescale the kept ones by
    ``1 / density``, and add the weighted task vectors."""

    name = "dare_linear"
    paper = ("Yu et al. 2024, 'Language Models are Super Mario: Absorbing Abilities from Homologous Models as a "
             "Free Lunch' (DARE)")
    Parameters = DareParameters

    def merge(self, models, base, weights, parameters, site):
        from peft.utils.merge_utils import dare_linear  # as above

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tensor_seed(parameters.seed, site.name))
            merged = dare_linear(task_vectors(models, base), _weights(weights), density=parameters.density)
        return base + parameters.lambda_ * merged


@register
class DareTies(_SignElection):
    """DARE's random drop and rescale, then TIES's sign election over the rescaled task vectors."""

    name = "dare_ties"
    paper = "Yu et al. 2024 (DARE) with TIES sign election (Yadav et al. 2023)"
    Parameters = DareTiesParameters

    def merge(self, models, base, weights, parameters, site):
        from peft.utils.merge_utils import dare_ties  # as above

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tensor_seed(parameters.seed, site.name))
            merged = dare_ties(task_vectors(models, base), _weights(weights), density=parameters.density,
                               majority_sign_method=parameters.majority_sign_method)
        return base + parameters.lambda_ * merged
