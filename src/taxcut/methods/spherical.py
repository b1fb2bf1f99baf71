"""Spherical linear interpolation between two models."""

from __future__ import annotations

import math

import torch

from taxcut.methods.registry import method


@method("slerp", paper="Shoemake 1985, 'Animating rotation with quaternion curves' (SLERP), as used for model "
        "merging by mergekit", min_models=2, max_models=2)
def slerp(models: list[torch.Tensor], base, weights: list[float], params: dict, name: str) -> torch.Tensor:
    """Interpolate along the great circle between the two flattened tensors at ``t`` (0: the first model),
    falling back to linear interpolation when they are (nearly) parallel."""
    t = float(params.get("t", 0.5))
    first, second = models
    a, b = first.reshape(-1).double(), second.reshape(-1).double()
    norms = a.norm() * b.norm()
    if norms == 0:
        return torch.lerp(first, second, t)
    cosine = float((a @ b / norms).clamp(-1.0, 1.0))
    if abs(cosine) > float(params.get("parallel_threshold", 0.9995)):
        return torch.lerp(first, second, t)
    theta = math.acos(cosine)
    scale_a = math.sin((1 - t) * theta) / math.sin(theta)
    scale_b = math.sin(t * theta) / math.sin(theta)
    return (scale_a * a + scale_b * b).to(first.dtype).reshape(first.shape)
