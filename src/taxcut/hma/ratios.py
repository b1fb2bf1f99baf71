"""HMA's block ratios as pure functions (Lin et al., EMNLP 2024, arXiv 2309.06256, Sec. 6 and App. B.1).

One share of the two models is normalised over the K blocks, the other share is its complement:

    x_k = x * K * (sigmoid(s_k) + eps) / sum_j (sigmoid(s_j) + eps)

- ``normalize="sft"`` (the paper's code, taxcut's default): x = 1 - a, the SFT share, and ``a_k = 1 - x_k``;
- ``normalize="aligned"`` (taxcut's earlier default): x = a and ``a_k = x_k``.

Either way ``mean_k a_k = a`` exactly, whatever the logits, and ``s_k = logit(x)`` for every k starts at MA.

**The bound.** ``x_k`` is largest when ``sigmoid(s_k) -> 1`` and every other sigmoid ``-> 0``, smallest the other
way round:

    max x_k = x K (1 + eps) / (1 + K eps),      min x_k = x K eps / (K - 1 + K eps) >= 0.

So every ``x_k`` -- hence every ``a_k`` -- stays within [0, 1] for all logits if and only if
``x K (1 + eps) <= 1 + K eps``, that is

    eps >= eps_min(x, K) = max(0, (x K - 1) / (K (1 - x))).

At a = 0.8 and K = 3 normalising the SFT share (x = 0.2) needs no eps at all (any eps keeps every block within
[0.55, 0.95] at eps 0.2), while normalising the aligned share (x = 0.8) needs eps >= 2.33 (at eps 0.05 a block
could reach 2.19). :func:`bounded_eps` raises a smaller eps to ``eps_min``; the fit prints it and records it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Normalize = Literal["sft", "aligned"]


def normalized_share(alpha: float, normalize: Normalize) -> float:
    """x: the share normalised over the blocks -- the SFT model's ``1 - a`` or the aligned model's ``a``."""
    return 1.0 - alpha if normalize == "sft" else alpha


def min_eps(share: float, blocks: int) -> float:
    """The smallest eps that keeps every ``x_k`` within [0, 1] for any logits: ``max(0, (xK - 1) / (K(1 - x)))``."""
    return max(0.0, (share * blocks - 1.0) / (blocks * (1.0 - share)))


def bounded_eps(alpha: float, blocks: int, eps: float, normalize: Normalize) -> float:
    """``eps``, raised to :func:`min_eps` where it would let a block ratio leave [0, 1]."""
    return max(eps, min_eps(normalized_share(alpha, normalize), blocks))


def block_ratios(logits: torch.Tensor, alpha: float, eps: float, normalize: Normalize = "sft") -> torch.Tensor:
    """The K block ratios ``a_k`` (weighing the aligned model; mean exactly ``alpha``) from the K block logits.

    With ``eps >= min_eps`` the formula never leaves [0, 1]; the clamp only removes float rounding at the edge
    (a ratio of 1 + 1e-7 would be refused by ``merge``).
    """
    weights = torch.sigmoid(logits) + eps  # (K,)
    shares = normalized_share(alpha, normalize) * logits.numel() * weights / weights.sum()
    ratios = 1 - shares if normalize == "sft" else shares
    return ratios.clamp(0.0, 1.0)


def initial_logits(alpha: float, blocks: int, normalize: Normalize = "sft") -> torch.Tensor:
    """``logit(x)`` for every block: the start is model averaging with ratio ``alpha``."""
    share = normalized_share(alpha, normalize)
    return torch.full((blocks,), math.log(share / (1 - share)), dtype=torch.float32)


def ratio_bounds(alpha: float, blocks: int, eps: float, normalize: Normalize = "sft") -> tuple[float, float]:
    """The smallest and largest ratio ``a_k`` a block can reach (the sigmoids at 0 and 1) -- before the clamp, so
    with ``eps < min_eps`` one of them lies outside [0, 1]."""
    share = normalized_share(alpha, normalize)
    if blocks == 1:
        return alpha, alpha
    high = share * blocks * (1 + eps) / (1 + blocks * eps)
    low = share * blocks * eps / (blocks - 1 + blocks * eps)
    return (1 - high, 1 - low) if normalize == "sft" else (low, high)


def paper_reg_weights(
    layers: Sequence[tuple[int, int]], num_layers: int, blocks: int, scale: float = 1e-4, peak: float = 25.0
) -> list[float]:
    """The weights ``w_k`` of the paper's L1 pull ``sum_k w_k |a_k - a|``, from its released code: every Linear
    weight in layer l adds ``scale * peak / (|l - L/2| + 1)`` to its block's weight, so the middle block is pinned
    hardest (the code's layer 13 of 26 is our ``L/2``; its scale ``reg_alpha = 1e-4``).

    ``layers``: (layer index, block) of every Linear weight that follows the blocks.
    """
    weights = [0.0] * blocks
    for layer, block in layers:
        weights[block] += scale * peak / (abs(layer - num_layers / 2) + 1)
    return weights


def free_ratios(logits: torch.Tensor) -> torch.Tensor:
    """``--mean free``: each ratio ``sigmoid(s_k)`` on its own, within [0, 1] -- a tax term can pull them all
    toward the SFT model, which a mean held at ``a`` forbids."""
    return torch.sigmoid(logits)


def free_initial_logits(alpha: float, count: int) -> torch.Tensor:
    """``logit(a)`` for every ratio: the free fit starts at model averaging too."""
    return torch.full((count,), math.log(alpha / (1 - alpha)), dtype=torch.float32)
