"""Spherical linear interpolation between two models."""

from __future__ import annotations

import math

import torch

from taxcut.errors import TaxcutError
from taxcut.methods.mergekit_twin import MergekitParameter
from taxcut.methods.parameters import MethodParameters, per_block
from taxcut.methods.registry import MergeMethod, register


class SlerpParameters(MethodParameters):
    t: per_block("a number in [0, 1]", lambda v: 0 <= v <= 1) = 0.5  # 0: the first model, 1: the second
    parallel_threshold: float = 0.9995  # |cos| above this: plain linear interpolation


@register
class Slerp(MergeMethod):
    """Interpolate along the great circle between the two flattened tensors at ``t`` (0: the first model),
    falling back to linear interpolation when they are (nearly) parallel."""

    name = "slerp"
    paper = "Shoemake 1985, 'Animating rotation with quaternion curves' (SLERP), as used for model merging by mergekit"
    Parameters = SlerpParameters
    min_models, max_models = 2, 2

    def merge(self, models, base, weights, parameters, site):
        t = parameters.t
        first, second = models
        a, b = first.reshape(-1).double(), second.reshape(-1).double()
        norms = a.norm() * b.norm()
        if norms == 0:
            return torch.lerp(first, second, t)
        cosine = float((a @ b / norms).clamp(-1.0, 1.0))
        if abs(cosine) > parameters.parallel_threshold:
            return torch.lerp(first, second, t)
        theta = math.acos(cosine)
        scale_a = math.sin((1 - t) * theta) / math.sin(theta)
        scale_b = math.sin(t * theta) / math.sin(theta)
        return (scale_a * a + scale_b * b).to(first.dtype).reshape(first.shape)

    mergekit_parameters = (MergekitParameter("t", float),)

    def mergekit_merge(self, tensors, base_index, values, site):
        """mergekit's ``slerp`` from the base (t = 0) to the other input, in float32, chunked as mergekit chunks."""
        if base_index is None or len(tensors) != 2:
            raise TaxcutError("mergekit's 'slerp' takes a 'base_model' and exactly one other model")
        base, other = tensors[base_index], tensors[1 - base_index]
        return mergekit_slerp(values["t"], base.unsqueeze(0), other.unsqueeze(0))[0]

    def mergekit(self, plan) -> dict:
        return {
            "merge_method": "slerp",
            "base_model": plan.checkpoints[0].source.reference,
            "parameters": {"t": plan.request.parameters.t},
        }


_CHUNK_ELEMENTS = 1024 * 1024  # mergekit's bound on full-precision scratch


def mergekit_slerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8
) -> torch.Tensor:
    """mergekit 0.1.5's ``slerp`` on ``(groups, ...)`` tensors, operation for operation: norms as the norm of chunk
    norms, the dot of normalised chunks, linear interpolation where ``|cos| > dot_threshold``; the result in the
    inputs' dtype."""
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(v0.shape[0], -1), v1.reshape(v1.shape[0], -1)
    t = torch.full((a.shape[0], 1), t, dtype=dtype)
    if not a.shape[1]:
        return ((1 - t) * a + t * b).reshape(v0.shape).to(v0.dtype)
    size = max(1, _CHUNK_ELEMENTS // a.shape[0])
    starts = range(0, a.shape[1], size)

    def chunk(x: torch.Tensor, start: int) -> torch.Tensor:
        return x[:, start : start + size].to(dtype)

    norm_a = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(chunk(a, s), dim=1, keepdim=True) for s in starts]), dim=0
    )
    norm_b = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(chunk(b, s), dim=1, keepdim=True) for s in starts]), dim=0
    )
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dot = (
        torch.stack([((chunk(a, s) / norm_a) * (chunk(b, s) / norm_b)).sum(dim=1, keepdim=True) for s in starts])
        .sum(dim=0)
        .clamp(-1, 1)
    )
    linear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    result = torch.empty_like(a)
    for s in starts:
        result[:, s : s + size] = coef_a * chunk(a, s) + coef_b * chunk(b, s)
    return result.reshape(v0.shape)
