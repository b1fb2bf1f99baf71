"""Spherical linear interpolation between two models."""

from __future__ import annotations

import math

import torch

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

    def mergekit(self, plan) -> dict:
        return {"merge_method": "slerp", "base_model": plan.checkpoints[0].source.reference,
                "parameters": {"t": plan.request.parameters.t}}
