"""The front with error bars on hand-made points: the tax's error, dominance beyond the noise, hypervolume."""

from __future__ import annotations

import math

import pytest

from taxcut.sweep.noise import (
    NoisyPoint,
    dominates_beyond_noise,
    hypervolume,
    noise_aware_front,
    tax_stderr,
    z_value,
)
from taxcut.sweep.pareto import pareto_front


def test_the_tax_error_combines_the_tasks():
    assert tax_stderr({"a": 0.03, "b": 0.04}, ["a", "b"]) == pytest.approx(0.05 / 2)
    assert tax_stderr({"a": 0.03, "b": math.nan}, ["a", "b"]) == pytest.approx(0.03 / 2)  # unknown counts as exact
    assert tax_stderr({}, []) == 0.0


def test_dominance_beyond_the_noise_needs_both_axes():
    z = z_value(0.05)
    assert z == pytest.approx(1.6449, abs=1e-4)
    low = NoisyPoint(reward=1.0, tax=0.5, reward_stderr=0.1, tax_stderr=0.1)
    # better on both axes by more than z * sqrt(0.1^2 + 0.1^2) = 0.233: dominates beyond the noise
    clear = NoisyPoint(reward=1.3, tax=0.2, reward_stderr=0.1, tax_stderr=0.1)
    assert dominates_beyond_noise(clear, low) and not dominates_beyond_noise(low, clear)
    # better on both axes, but the tax only by 0.2 (< 0.233): within the noise
    close = NoisyPoint(reward=1.3, tax=0.3, reward_stderr=0.1, tax_stderr=0.1)
    assert not dominates_beyond_noise(close, low)
    # the same points without errors: any strict improvement dominates
    exact = [NoisyPoint(p.reward, p.tax) for p in (close, low)]
    assert dominates_beyond_noise(exact[0], exact[1])
    assert not dominates_beyond_noise(low, low)  # a point never dominates itself


def test_noise_aware_front_keeps_what_the_data_cannot_rule_out():
    points = [
        NoisyPoint(0.0, 0.0, 0.05, 0.02),  # SFT
        NoisyPoint(0.9, 0.10, 0.05, 0.02),  # on the front
        NoisyPoint(0.85, 0.11, 0.05, 0.02),  # strictly dominated by the one above, but only within the noise
        NoisyPoint(0.4, 0.30, 0.05, 0.02),  # dominated far beyond the noise
        NoisyPoint(1.2, 0.60, 0.05, 0.02),  # on the front
        NoisyPoint(math.nan, 0.1),  # never on a front
    ]
    strict = pareto_front([(p.reward, p.tax) for p in points])
    noisy = noise_aware_front(points)
    assert strict == [True, True, False, False, True, False]
    assert noisy == [True, True, True, False, True, False]
    assert all(n for s, n in zip(strict, noisy) if s)  # the strict front is inside the noise-aware one
    # at a loose level (z = 0.13) the close one is dominated beyond the noise too
    assert noise_aware_front(points, level=0.45) == [True, True, False, False, True, False]


def test_hypervolume_of_a_staircase():
    points = [(1.0, 0.0), (2.0, 1.0), (3.0, 3.0), (1.5, 2.0)]  # (reward, tax); the last is dominated
    # from reference (0, 4): tax 0-1 reward 1, 1-3 reward 2, 3-4 reward 3 -> 1 + 4 + 3
    assert hypervolume(points, (0.0, 4.0)) == pytest.approx(8.0)
    assert hypervolume(points[:3], (0.0, 4.0)) == pytest.approx(8.0)
    assert hypervolume([(-1.0, 0.0), (1.0, 5.0)], (0.0, 4.0)) == 0.0  # outside the reference box
    assert hypervolume([], (0.0, 1.0)) == 0.0
