"""The paper's parameterisation of the block ratios, as pure tensor functions.

    a_k = a * K * (sigmoid(s_k) + eps) / sum_j (sigmoid(s_j) + eps)

so ``mean_k a_k = a`` exactly, whatever the logits ``s_k``; ``s_k = logit(a)`` for every k starts at MA; and
``eps`` bounds the spread: each ``a_k`` stays within :func:`ratio_bounds`.
"""

from __future__ import annotations

import math

import torch


def block_ratios(logits: torch.Tensor, alpha: float, eps: float) -> torch.Tensor:
    """The K block ratios (mean exactly ``alpha``) from the K block logits."""
    weights = torch.sigmoid(logits) + eps
    return alpha * logits.numel() * weights / weights.sum()


def initial_logits(alpha: float, blocks: int) -> torch.Tensor:
    """``logit(alpha)`` for every block: the start is model averaging with ratio ``alpha``."""
    return torch.full((blocks,), math.log(alpha / (1 - alpha)), dtype=torch.float32)


def ratio_bounds(alpha: float, blocks: int, eps: float) -> tuple[float, float]:
    """The smallest and largest ratio a block can reach (sigmoids at 0 and 1, the extremes of the formula)."""
    if blocks == 1:
        return alpha, alpha
    high = alpha * blocks * (1 + eps) / ((1 + eps) + (blocks - 1) * eps)
    low = alpha * blocks * eps / (eps + (blocks - 1) * (1 + eps))
    return low, high
