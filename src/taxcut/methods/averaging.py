"""Averaging methods: weighted linear soups, ExPO, and variance-corrected averaging."""

from __future__ import annotations

import torch

from taxcut.errors import TaxcutError
from taxcut.methods.registry import method


@method("linear", paper="Wortsman et al. 2022, 'Model soups: averaging weights of multiple fine-tuned models "
        "improves accuracy without increasing inference time'", elementwise=True)
def linear(models: list[torch.Tensor], base, weights: list[float], params: dict, name: str) -> torch.Tensor:
    """``sum_i w_i * theta_i / sum_i w_i`` (a uniform soup with equal weights; ``normalize: false`` skips the
    division)."""
    total = sum(weights) if params.get("normalize", True) else 1.0
    if total == 0:
        raise TaxcutError("the weights of a normalised linear merge sum to zero")
    merged = torch.zeros_like(models[0])
    for tensor, weight in zip(models, weights):
        merged.add_(tensor, alpha=weight / total)
    return merged


@method("expo", paper="Zheng et al. 2024, 'Weak-to-Strong Extrapolation Expedites Alignment' (ExPO)",
        needs_base=True, min_models=1, max_models=1, elementwise=True)
def expo(models: list[torch.Tensor], base, weights: list[float], params: dict, name: str) -> torch.Tensor:
    """``aligned + a * (aligned - sft)``: the base is the SFT model, the one input the aligned model."""
    alpha = float(params.get("alpha", 0.3))
    return models[0] + alpha * (models[0] - base)


@method("variance_corrected", paper="'Vanishing Variance Problem in Fully Decentralized Neural-Network Systems' "
        "(variance-corrected averaging)", min_models=2)
def variance_corrected(models: list[torch.Tensor], base, weights: list[float], params: dict,
                       name: str) -> torch.Tensor:
    """The weighted average, rescaled around its mean so that its variance equals the inputs' mean variance."""
    merged = linear(models, base, weights, {}, name)
    if merged.numel() < 2:
        return merged
    target = torch.stack([t.var() for t in models]).mean()
    current = merged.var()
    if current <= 0:
        return merged
    mean = merged.mean()
    return (merged - mean) * torch.sqrt(target / current) + mean


@method("checkpoints", paper="Schmidt et al. 2023, 'Free Lunch: Robust Cross-Lingual Transfer via Model Checkpoint "
        "Averaging'", elementwise=True)
def checkpoints(models: list[torch.Tensor], base, weights: list[float], params: dict, name: str) -> torch.Tensor:
    """The (weighted) average of the checkpoints of one run; the spec's ``checkpoints`` section picks them (all,
    the last k, or EMA weights with a decay)."""
    return linear(models, base, weights, {}, name)


@method("sparse_soup", paper="Zimmer et al. 2024, 'Sparse Model Soups: A Recipe for Improved Pruning via Model "
        "Averaging'", min_models=2, elementwise=True)
def sparse_soup(models: list[torch.Tensor], base, weights: list[float], params: dict, name: str) -> torch.Tensor:
    """The weighted average of models that share one sparsity mask; the mask is kept exactly."""
    mask = models[0] != 0
    for index, tensor in enumerate(models[1:], start=2):
        differ = int(((tensor != 0) != mask).sum())
        if differ:
            raise TaxcutError(f"tensor '{name}': model {index}'s sparsity mask differs from model 1's at {differ} "
                              "positions; a sparse soup needs models pruned with one shared mask")
    return linear(models, base, weights, {}, name) * mask


@method("greedy_soup", paper="Wortsman et al. 2022, 'Model soups' (greedy soup)", min_models=2, elementwise=True)
def greedy_soup(models: list[torch.Tensor], base, weights: list[float], params: dict, name: str) -> torch.Tensor:
    """The uniform average of the ingredients a greedy selection kept (see :mod:`taxcut.tuning.greedy_soup`)."""
    return linear(models, base, [1.0] * len(models), {}, name)
