"""Merge math as pure tensor functions: no paths, no models, no I/O.

Model averaging (MA) from "Mitigating the Alignment Tax of RLHF" (Lin et al., EMNLP 2024, arXiv 2309.06256):

    theta(a) = (1 - a) * theta_sft + a * theta_aligned      (a weighs the ALIGNED model; a > 1 is ExPO)

The arithmetic is done in float32 on cache-sized blocks and cast to the output's dtype: for bfloat16 models this
is several times faster than converting whole tensors. It is the arithmetic of mergekit's ``linear`` (0.1.5):
``x = 0 + (1 - a) * sft`` then ``x += a * aligned`` as a fused multiply-add (``addcmul``, one rounding), with both
weights rounded to float32 first. So an MA/HMA merge and the mergekit config ``taxcut export-mergekit`` writes for
it give the same bytes, whichever tool runs that config; rounding the two products apart would differ by an ulp
in about one element of five.
"""

from __future__ import annotations

import math

import torch

BLOCK_ELEMENTS = 1 << 20  # 4 MiB of float32: fits the caches that make the blocked loop fast


def interpolate(
    sft: torch.Tensor,
    aligned: torch.Tensor,
    alpha: float,
    out: torch.Tensor,
    *,
    scratch: torch.Tensor | None = None,
    check_finite: bool = True,
) -> bool:
    """Write ``(1 - alpha) * sft + alpha * aligned`` into ``out`` (mergekit's ``linear`` arithmetic, see the module);
    return whether every result is finite.

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
    # 0-dim float32 weights where out is (a ternary op takes no CPU scalar beside CUDA tensors)
    keep, take = (torch.tensor(v, dtype=torch.float32, device=out.device) for v in (1.0 - alpha, alpha))
    finite = True
    for start in range(0, total, BLOCK_ELEMENTS):
        stop = min(total, start + BLOCK_ELEMENTS)
        result = out_flat[start:stop]
        x = result if result.dtype == torch.float32 else left[: stop - start]
        # mergekit's zeros.addcmul_(sft, 1 - a) is (1 - a) * sft + 0: the + 0 turns a -0 product into +0, and as
        # its own pass over the cached block it is faster than addcmul with a broadcast zero
        torch.mul(_float32(sft_flat[start:stop], left[: stop - start]), keep, out=x).add_(0.0)
        x.addcmul_(_float32(aligned_flat[start:stop], right[: stop - start]), take)
        if x is not result:
            result.copy_(x)
        # checking the cast result catches NaN/Inf from the inputs (they survive the cast) and a cast that overflows
        finite = finite and (not check_finite or all_finite(result))
    return finite


def _float32(values: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """``values`` as float32 on ``buffer``'s device: themselves when they already are, else copied into ``buffer``."""
    if values.dtype == torch.float32 and values.device == buffer.device:
        return values
    buffer.copy_(values, non_blocking=True)  # from pinned host memory: asynchronous, ordered before the arithmetic
    return buffer


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a float tensor holds no NaN or Inf (one cheap reduction; an exact check only if that overflows)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    total = tensor.sum() if tensor.dtype == torch.float32 else tensor.sum(dtype=torch.float32)
    if math.isfinite(total.item()):
        return True
    return bool(torch.isfinite(tensor).all())
