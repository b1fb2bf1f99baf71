"""Merge math as pure tensor functions: no paths, no models, no I/O.

Model averaging (MA) from "Mitigating the Alignment Tax of RLHF" (Lin et al., EMNLP 2024, arXiv 2309.06256):

    theta(a) = (1 - a) * theta_sft + a * theta_aligned      (a weighs the ALIGNED model; a > 1 is ExPO)

The arithmetic is done in float32 on cache-sized blocks and cast to the output's dtype: for bfloat16 models this
is several times faster than converting whole tensors, and the result is bit-for-bit that of the plain float32
expression ``(1 - a) * sft.float() + a * aligned.float()`` cast to the output dtype.
"""

from __future__ import annotations

import math

import torch

BLOCK_ELEMENTS = 1 << 20  # 4 MiB of float32: fits the caches that make the blocked loop fast


def interpolate(
    sft: torch.Tensor, aligned: torch.Tensor, alpha: float, out: torch.Tensor, *,
    scratch: torch.Tensor | None = None, check_finite: bool = True,
) -> bool:
    """Write ``(1 - alpha) * sft + alpha * aligned`` into ``out``; return whether every result is finite.

    ``sft``, ``aligned`` and ``out`` have the same number of elements (any float dtypes, any shapes); the inputs are
    not modified. ``out`` must be contiguous. ``scratch``, a float32 tensor of ``2 * BLOCK_ELEMENTS`` elements on
    ``out``'s device, saves the allocation when called in a loop. The inputs may live on another device (host
    memory for a GPU ``out``): each block is copied over, then computed where ``out`` is. Without ``check_finite``
    (no host sync per block, for GPUs) the result is reported finite.
    """
    sft_flat, aligned_flat, out_flat = sft.reshape(-1), aligned.reshape(-1), out.view(-1)
    total = out_flat.numel()
    if not sft_flat.numel() == aligned_flat.numel() == total:
        raise ValueError(f"element counts differ: {sft_flat.numel()}, {aligned_flat.numel()}, {total}")
    if total == 0:
        return True
    if scratch is None:
        scratch = torch.empty(2 * min(BLOCK_ELEMENTS, total), dtype=torch.float32, device=out.device)
    left, right = scratch.chunk(2)
    keep, take = 1.0 - alpha, alpha
    finite = True
    for start in range(0, total, BLOCK_ELEMENTS):
        stop = min(total, start + BLOCK_ELEMENTS)
        x, y = left[: stop - start], right[: stop - start]
        _scaled(sft_flat[start:stop], keep, x)
        _scaled(aligned_flat[start:stop], take, y)
        result = out_flat[start:stop]
        if result.dtype == torch.float32:
            torch.add(x, y, out=result)
        else:
            x.add_(y)
            result.copy_(x)
        # checking the cast result catches NaN/Inf from the inputs (they survive the cast) and a cast that overflows
        finite = finite and (not check_finite or all_finite(result))
    return finite


def _scaled(values: torch.Tensor, factor: float, out: torch.Tensor) -> None:
    """``out = float32(values) * factor``, one pass when ``values`` is already float32 and on ``out``'s device."""
    if values.dtype == torch.float32 and values.device == out.device:
        torch.mul(values, factor, out=out)
    else:
        out.copy_(values, non_blocking=True)  # from pinned host memory: asynchronous, ordered before the multiply
        out.mul_(factor)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a float tensor holds no NaN or Inf (one cheap reduction; an exact check only if that overflows)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    total = tensor.sum() if tensor.dtype == torch.float32 else tensor.sum(dtype=torch.float32)
    if math.isfinite(total.item()):
        return True
    return bool(torch.isfinite(tensor).all())
