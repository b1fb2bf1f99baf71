from __future__ import annotations

import numpy as np
import pytest
import torch

from taxcut.methods.interpolation import BLOCK_ELEMENTS, all_finite, interpolate


def reference(sft: torch.Tensor, aligned: torch.Tensor, alpha: float, dtype: torch.dtype) -> torch.Tensor:
    """mergekit's linear on whole tensors (0 + (1 - a) * sft, then a * aligned added fused by addcmul) in float32,
    then cast like the output."""
    merged = torch.zeros(sft.shape, dtype=torch.float32)
    merged.addcmul_(sft.float(), torch.tensor(1.0 - alpha)).addcmul_(aligned.float(), torch.tensor(alpha))
    return merged.to(dtype)


def test_within_one_float32_ulp_of_the_exact_value():
    """Independent of torch's kernels: float64 products of the float32 weights are exact, so the float32 result is
    the exact value rounded once (FMA) or, at worst, twice: within one ulp."""
    generator = torch.Generator().manual_seed(1)
    sft, aligned = torch.randn(100_000, generator=generator), torch.randn(100_000, generator=generator)
    out = torch.empty(100_000)
    interpolate(sft, aligned, 0.3, out)
    s, t = sft.double().numpy(), aligned.double().numpy()
    exact = np.float64(np.float32(np.float32(0.7) * s)) + np.float64(np.float32(0.3)) * t
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert (np.abs(out.double().numpy() - exact) <= ulp).all()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_negative_zeros_come_out_as_in_mergekit(alpha):
    """mergekit starts from zeros: 0 + (-0) is +0, so where both products are -0 (a = 1 over a negative sft and a -0
    aligned, -0 in both at 0 < a < 1, ...) the result is +0, byte for byte."""
    sft, aligned = torch.tensor([-1.0, -0.0, -0.0, -2.0, 3.0]), torch.tensor([-0.0, -0.0, -4.0, -0.0, -0.0])
    out = torch.empty(5)
    interpolate(sft, aligned, alpha, out)
    assert torch.equal(out.view(torch.int32), reference(sft, aligned, alpha, torch.float32).view(torch.int32))
    assert not torch.signbit(out[1])  # -0 in both inputs


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
