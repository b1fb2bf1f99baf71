"""Task-vector methods relative to a base model, on peft's merge utilities: task arithmetic, TIES, DARE.

The four methods compared in "What Matters for Model Merging at Scale?" (Yadav et al. 2024). Task vectors are
``theta_i - theta_base``; the merged model is ``theta_base + lambda * merge(task vectors)``. DARE is seeded per
tensor (``seed`` and the tensor's name), so a merge is reproducible.
"""

from __future__ import annotations

import hashlib

import torch

from taxcut.methods.registry import method


def _task_vectors(models: list[torch.Tensor], base: torch.Tensor) -> list[torch.Tensor]:
    return [tensor - base for tensor in models]


def _weights(weights: list[float]) -> torch.Tensor:
    return torch.tensor(weights, dtype=torch.float32)


def _seed(params: dict, name: str) -> int:
    """The random seed of one tensor: the spec's ``seed`` and the tensor's name."""
    return int(params.get("seed", 0)) * 1_000_003 + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


@method("task_arithmetic", paper="Ilharco et al. 2023, 'Editing Models with Task Arithmetic'", needs_base=True,
        elementwise=True)
def task_arithmetic(models, base, weights, params, name):
    from peft.utils.merge_utils import task_arithmetic as peft_task_arithmetic

    merged = peft_task_arithmetic(_task_vectors(models, base), _weights(weights))
    return base + float(params.get("lambda", 1.0)) * merged


@method("ties", paper="Yadav et al. 2023, 'TIES-Merging: Resolving Interference When Merging Models'",
        needs_base=True)
def ties(models, base, weights, params, name):
    from peft.utils.merge_utils import ties as peft_ties

    merged = peft_ties(_task_vectors(models, base), _weights(weights), density=float(params.get("density", 0.2)),
                       majority_sign_method=params.get("majority_sign_method", "total"))
    return base + float(params.get("lambda", 1.0)) * merged


@method("dare_linear", paper="Yu et al. 2024, 'Language Models are Super Mario: Absorbing Abilities from "
        "Homologous Models as a Free Lunch' (DARE)", needs_base=True)
def dare_linear(models, base, weights, params, name):
    from peft.utils.merge_utils import dare_linear as peft_dare_linear

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(params, name))
        merged = peft_dare_linear(_task_vectors(models, base), _weights(weights),
                                  density=float(params.get("density", 0.5)))
    return base + float(params.get("lambda", 1.0)) * merged


@method("dare_ties", paper="Yu et al. 2024 (DARE) with TIES sign election (Yadav et al. 2023)", needs_base=True)
def dare_ties(models, base, weights, params, name):
    from peft.utils.merge_utils import dare_ties as peft_dare_ties

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(params, name))
        merged = peft_dare_ties(_task_vectors(models, base), _weights(weights),
                                density=float(params.get("density", 0.5)),
                                majority_sign_method=params.get("majority_sign_method", "total"))
    return base + float(params.get("lambda", 1.0)) * merged
