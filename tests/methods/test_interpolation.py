from __future__ import annotations

import numpy as np
import pytest
import torch

from taxcut.methods.interpolation import BLOCK_ELEMENTS, all_finite, interpolate


def reference(sft: torch.Tensor, aligned: torch.Tensor, alpha: float, dtype: torch.dtype) -> torch.Tensor:
    """(1 - a) * sft + a * aligned in float32 with numpy, then cast like the output."""
    s, t = sft.float().numpy(), aligned.float().numpy()
    merged = np.float32(1.0 - alpha) * s + np.float32(alpha) * t
    return torch.from_numpy(merged).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0, 1.7, -0.4])
def test_matches_float32_reference_exactly(dtype, alpha):
    generator = torch.Generator().manual_seed(0)
    count = BLOCK_ELEMENTS + 12345  # crosses a block boundary
    sft = torch.randn(count, generator=generator).to(dtype)
    aligned = torch.randn(count, generator=generator).to(dtype)
    out = torch.empty(count, dtype=dtype)
    assert interpolate(sft, aligned, alpha, out)
    assert torch.equal(out, reference(sft, aligned, alpha, dtype))


def test_endpoints_are_the_inputs_and_inputs_untouched():
    sft, aligned = torch.randn(3, 5), torch.randn(3, 5)
    kept = sft.clone(), aligned.clone()
    out = torch.empty(3, 5)
    interpolate(sft, aligned, 0.0, out)
    assert torch.equal(out, sft)
    interpolate(sft, aligned, 1.0, out)
    assert torch.equal(out, aligned)
    assert torch.equal(sft, kept[0]) and torch.equal(aligned, kept[1])


def test_mixed_input_dtypes_and_output_cast():
    sft, aligned = torch.randn(100).to(torch.bfloat16), torch.randn(100)
    out = torch.empty(100, dtype=torch.float16)
    interpolate(sft, aligned, 0.25, out)
    assert torch.equal(out, reference(sft, aligned, 0.25, torch.float16))


def test_non_finite_is_reported():
    sft, aligned = torch.zeros(10), torch.ones(10)
    sft[3] = float("nan")
    assert not interpolate(sft, aligned, 1.0, torch.empty(10))  # 0 * NaN is still NaN
    sft[3] = float("inf")
    assert not interpolate(sft, aligned, 0.5, torch.empty(10))
    big = torch.full((4,), 60000.0)
    assert not interpolate(torch.zeros(4), big, 1.5, torch.empty(4, dtype=torch.float16))  # 90000 overflows float16
    assert all_finite(torch.full((4,), 3e38))  # a sum that overflows falls back to the exact check


@pytest.mark.parametrize(("dtype", "value"), [(torch.bfloat16, 3.0e38), (torch.float8_e5m2, 1e5)])
def test_cast_overflow_is_reported_for_narrow_outputs(dtype, value):
    """Finite in float32, Inf once cast to the output dtype."""
    sft, aligned = torch.zeros(4), torch.full((4,), value)
    assert not interpolate(sft, aligned, 1.2, torch.empty(4, dtype=dtype))
