"""Task-vector methods relative to a base model, on peft's merge utilities: task arithmetic, TIES, DARE.

The four methods compared in "What Matters for Model Merging at Scale?" (Yadav et al. 2024). Task vectors are
``theta_i - theta_base``; the merged model is ``theta_base + lambda * merge(task vectors)``. DARE is seeded per
tensor (``seed`` and the tensor's name), so a merge is reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
from pydantic import Field

from taxcut.errors import TaxcutError
from taxcut.methods.mergekit_twin import MergekitParameter
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


@contextmanager
def seeded_for(seed: int, name: str) -> Iterator[None]:
    """DARE's random drop, seeded per tensor (:func:`tensor_seed`) inside the block, the global stream untouched
    after it (mergekit draws from one global stream, so its merges depend on the order of the tensors)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tensor_seed(seed, name))
        yield


def _rescaled(delta: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7) -> torch.Tensor:
    """mergekit's masking: ``delta * mask``, with ``rescale`` scaled back to the L1 norm of ``delta``."""
    masked = delta * mask
    if not rescale:
        return masked
    before, after = delta.abs().sum(), masked.abs().sum()
    return masked if before < eps or after < eps else masked * (before / after)


def _majority_mask(deltas: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """mergekit's TIES sign election ('sum'): keep the entries whose sign is that of the summed deltas."""
    sign = deltas.sign().to(dtype)
    majority = (deltas.sum(dim=0) >= 0).to(dtype) * 2 - 1
    return sign == majority


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
    # mergekit's twin of the method, as data (mergekit's GeneralizedTaskArithmeticMerge): how task vectors are
    # sparsified, whether signs are elected, and the defaults of 'normalize' and 'rescale'.
    mergekit_sparsify: ClassVar[Literal["magnitude", "random"] | None] = None
    mergekit_sign_election: ClassVar[bool] = False
    mergekit_normalize: ClassVar[bool] = False
    mergekit_rescale: ClassVar[bool] = False

    def mergekit(self, plan) -> dict:
        parameters = plan.request.parameters
        per_model = {"density": parameters.density} if hasattr(parameters, "density") else {}
        return {"merge_method": self.name, "parameters": {"lambda": parameters.lambda_}, "model_parameters": per_model}

    @property
    def mergekit_parameters(self) -> tuple[MergekitParameter, ...]:
        return (
            MergekitParameter("int8_mask", bool, default=False),
            MergekitParameter("normalize", bool, default=self.mergekit_normalize),
            MergekitParameter("rescale", bool, default=self.mergekit_rescale),
            MergekitParameter("lambda", float, default=1.0),
            MergekitParameter("weight", float, "non_base"),
            MergekitParameter("density", float, "non_base", default=1.0),
        )

    def mergekit_merge(self, tensors, base_index, values, site):
        """mergekit's generalized task arithmetic, in the working dtype: sparsify each task vector (with an L1
        rescale when ``rescale``), weigh it, elect signs by the summed deltas (TIES), sum, divide by the weights
        (of the agreeing models) when ``normalize``, scale by ``lambda``."""
        if base_index is None:
            raise TaxcutError(f"mergekit's '{self.name}' works on task vectors: give a 'base_model'")
        base = tensors[base_index]
        others = [i for i in range(len(tensors)) if i != base_index]
        if not others:
            return base
        deltas = base.new_empty((len(others), *base.shape))
        for row, index in enumerate(others):
            deltas[row] = self._sparsified(
                tensors[index] - base, values["density"][index], values["rescale"], site.name, index
            )
        weights = torch.tensor([values["weight"][i] for i in others], dtype=deltas.dtype)
        while deltas.dim() > weights.dim():
            weights.unsqueeze_(-1)
        deltas.mul_(weights)
        if self.mergekit_sign_election:
            mask = _majority_mask(deltas, torch.int8 if values["int8_mask"] else base.dtype)
            mixed, divisor = (deltas * mask).sum(dim=0), (weights * mask).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed, divisor = deltas.sum(dim=0), weights.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
        if values["normalize"]:
            mixed /= divisor
        if values["lambda"] != 1:
            mixed *= values["lambda"]
        return (base + mixed).to(base.dtype)

    def _sparsified(self, delta, density, rescale, name, index):
        if self.mergekit_sparsify is None or density >= 1:
            return delta
        if self.mergekit_sparsify == "magnitude":
            if density <= 0 or delta.numel() == 0:
                return torch.zeros_like(delta)
            mask = torch.zeros(delta.numel(), dtype=delta.dtype)
            magnitudes = delta.abs().reshape(-1).float()
            mask[torch.argsort(magnitudes, descending=True)[: max(1, int(density * delta.numel()))]] = 1
            return _rescaled(delta, mask.reshape_as(delta), rescale)
        work = delta.dtype if delta.dtype == torch.bfloat16 else torch.float32  # no float16 bernoulli on CPU
        with seeded_for(index, name):  # seeded per tensor and input
            mask = torch.bernoulli(torch.full_like(delta, density, dtype=work))
        return _rescaled(delta.to(work), mask, rescale).to(delta.dtype)


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
            raise TaxcutError(
                f"weighted {self.name}: taxcut (peft) divides by the number of agreeing models, "
                "mergekit by their weight sum; only equal weights (1.0) export exactly"
            )
        return super().mergekit(plan)


@register
class Ties(_SignElection):
    """TIES: trim each task vector to its top-``density`` magnitudes, elect a sign per entry, average the kept
    values that agree with it."""

    name = "ties"
    paper = "Yadav et al. 2023, 'TIES-Merging: Resolving Interference When Merging Models'"
    Parameters = TiesParameters
    mergekit_sparsify, mergekit_sign_election, mergekit_normalize = "magnitude", True, True

    def merge(self, models, base, weights, parameters, site):
        from peft.utils.merge_utils import ties  # as above

        merged = ties(
            task_vectors(models, base),
            _weights(weights),
            density=parameters.density,
            majority_sign_method=parameters.majority_sign_method,
        )
        return base + parameters.lambda_ * merged


@register
class DareLinear(_TaskVectorMethod):
    """DARE: drop each task-vector entry with probability ``1 - density``, rescale the kept ones by
    ``1 / density``, and add the weighted task vectors."""

    name = "dare_linear"
    paper = (
        "Yu et al. 2024, 'Language Models are Super Mario: Absorbing Abilities from Homologous Models as a "
        "Free Lunch' (DARE)"
    )
    Parameters = DareParameters
    mergekit_sparsify, mergekit_rescale = "random", True

    def merge(self, models, base, weights, parameters, site):
        from peft.utils.merge_utils import dare_linear  # as above

        with seeded_for(parameters.seed, site.name):
            merged = dare_linear(task_vectors(models, base), _weights(weights), density=parameters.density)
        return base + parameters.lambda_ * merged


@register
class DareTies(_SignElection):
    """DARE's random drop and rescale, then TIES's sign election over the rescaled task vectors."""

    name = "dare_ties"
    paper = "Yu et al. 2024 (DARE) with TIES sign election (Yadav et al. 2023)"
    Parameters = DareTiesParameters
    mergekit_sparsify, mergekit_sign_election, mergekit_rescale = "random", True, True

    def merge(self, models, base, weights, parameters, site):
        from peft.utils.merge_utils import dare_ties  # as above

        with seeded_for(parameters.seed, site.name):
            merged = dare_ties(
                task_vectors(models, base),
                _weights(weights),
                density=parameters.density,
                majority_sign_method=parameters.majority_sign_method,
            )
        return base + parameters.lambda_ * merged
