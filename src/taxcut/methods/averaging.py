"""Averaging methods: weighted linear soups, checkpoint averaging, ExPO, sparse soups and variance-corrected
averaging. All but variance correction are elementwise, so the engine streams them chunk by chunk."""

from __future__ import annotations

import torch

from taxcut.errors import TaxcutError
from taxcut.methods.mergekit_twin import MergekitParameter
from taxcut.methods.parameters import MethodParameters, PerBlock
from taxcut.methods.registry import MergeMethod, TensorSite, register


def weighted_average(models: list[torch.Tensor], weights: list[float], *, normalize: bool = True) -> torch.Tensor:
    """``sum_i w_i * theta_i / sum_i w_i`` (without ``normalize``: the plain weighted sum)."""
    total = sum(weights) if normalize else 1.0
    if total == 0:
        raise TaxcutError("the weights of a normalised linear merge sum to zero; give weights with a non-zero sum")
    merged = torch.zeros_like(models[0])
    for tensor, weight in zip(models, weights):
        merged.add_(tensor, alpha=weight / total)
    return merged


class LinearParameters(MethodParameters):
    normalize: bool = True  # divide by the sum of the weights


@register
class Linear(MergeMethod):
    """``sum_i w_i * theta_i / sum_i w_i``: a uniform soup with equal weights (``normalize: false`` skips the
    division)."""

    name = "linear"
    paper = (
        "Wortsman et al. 2022, 'Model soups: averaging weights of multiple fine-tuned models improves accuracy "
        "without increasing inference time'"
    )
    Parameters = LinearParameters
    elementwise = True

    def merge(self, models, base, weights, parameters, site):
        return weighted_average(models, weights, normalize=parameters.normalize)

    def mergekit(self, plan) -> dict:
        return {"merge_method": "linear", "parameters": {"normalize": plan.request.parameters.normalize}}

    mergekit_parameters = (
        MergekitParameter("weight", float, "input"),
        MergekitParameter("normalize", bool, default=True),
    )

    def mergekit_merge(self, tensors, base_index, values, site):
        """mergekit's ``linear``: ``sum_i w_i * x_i`` in float32 (float64 for float64 inputs), divided by
        ``sum_i w_i`` last when ``normalize``, cast back to the working dtype."""
        first = tensors[0]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        weight = torch.tensor(values["weight"], dtype=dtype)
        result = torch.zeros_like(first, dtype=dtype)
        for tensor, coefficient in zip(tensors, weight.unbind(0)):
            result.addcmul_(tensor, coefficient)
        if values["normalize"]:
            result.div_(weight.sum())
        return result.to(first.dtype)


@register
class CheckpointAverage(MergeMethod):
    """The (weighted) average of the checkpoints of one run; the spec's ``checkpoints`` section picks them (all,
    the last k, or EMA weights with a decay)."""

    name = "checkpoints"
    paper = "Schmidt et al. 2023, 'Free Lunch: Robust Cross-Lingual Transfer via Model Checkpoint Averaging'"
    elementwise = True

    def merge(self, models, base, weights, parameters, site):
        return weighted_average(models, weights)


class ExpoParameters(MethodParameters):
    alpha: PerBlock = 0.3  # how far past the aligned model: aligned + alpha * (aligned - sft)


@register
class Expo(MergeMethod):
    """``aligned + alpha * (aligned - sft)``: the base is the SFT model, the one input the aligned model."""

    name = "expo"
    paper = "Zheng et al. 2024, 'Weak-to-Strong Extrapolation Expedites Alignment' (ExPO)"
    Parameters = ExpoParameters
    needs_base, min_models, max_models, elementwise = True, 1, 1, True

    def merge(self, models, base, weights, parameters, site):
        return models[0] + parameters.alpha * (models[0] - base)


@register
class VarianceCorrected(MergeMethod):
    """The weighted average, rescaled around its mean so that its variance equals the inputs' mean variance."""

    name = "variance_corrected"
    paper = "'Vanishing Variance Problem in Fully Decentralized Neural-Network Systems' (variance-corrected averaging)"
    min_models = 2

    def merge(self, models, base, weights, parameters, site):
        merged = weighted_average(models, weights)
        if merged.numel() < 2:
            return merged
        target = torch.stack([t.var() for t in models]).mean()
        current = merged.var()
        if current <= 0:
            return merged
        mean = merged.mean()
        return (merged - mean) * torch.sqrt(target / current) + mean


@register
class SparseSoup(MergeMethod):
    """The weighted average of models that share one sparsity mask; the mask is kept exactly."""

    name = "sparse_soup"
    paper = "Zimmer et al. 2024, 'Sparse Model Soups: A Recipe for Improved Pruning via Model Averaging'"
    min_models, elementwise = 2, True

    def merge(self, models, base, weights, parameters, site: TensorSite):
        mask = models[0] != 0
        for index, tensor in enumerate(models[1:], start=2):
            differ = int(((tensor != 0) != mask).sum())
            if differ:
                raise TaxcutError(
                    f"tensor '{site.name}': model {index}'s sparsity mask differs from model 1's at "
                    f"{differ} positions; a sparse soup needs models pruned with one shared mask"
                )
        return weighted_average(models, weights) * mask
