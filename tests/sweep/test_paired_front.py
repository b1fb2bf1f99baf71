"""Comparisons between candidates pair on their per-item scores (taxcut.sweep.noise): a small difference shared by
every item is beyond the noise when paired, within it when the two errors are taken as independent."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from taxcut.evaluation.paired import ItemScores, PerItem
from taxcut.evaluation.result import EvaluationResult, RewardScore
from taxcut.spec.candidates import ma_candidate
from taxcut.sweep.noise import NoisyPoint, dominates_beyond_noise, noise_aware_front, z_value
from taxcut.sweep.results import ResultRecord
from taxcut.sweep.runner import summarize

KEYS = range(4)
SPREAD = [0.0, 1.0, 2.0, 3.0]  # the items' own spread: each model's mean has error sd / sqrt(4)
OWN_ERROR = math.sqrt(sum((v - 1.5) ** 2 for v in SPREAD) / 3) / 2  # 0.6455
BASELINE = PerItem(tasks={"qa": ItemScores.of(KEYS, [1.0, 0.5, 0.75, 0.25])})


def scores(shift: float, jitter: float = 0.0) -> PerItem:
    """Per-item reward and "qa" scores, all moved by ``shift`` and, alternately, by -jitter and +jitter."""
    moved = [shift + (jitter if k % 2 else -jitter) for k in KEYS]
    return PerItem(
        ItemScores.of(KEYS, [v + d for v, d in zip(SPREAD, moved)]),
        {"qa": ItemScores.of(KEYS, [v + d for v, d in zip([0.75, 0.5, 0.25, 0.0], moved)])},
    )


def point(shift: float, jitter: float = 0.0, *, items: bool = True, baseline: PerItem = BASELINE) -> NoisyPoint:
    """A candidate 0.125 better on both axes per unit of ``shift``, with each model's own (unpaired) errors."""
    return NoisyPoint(
        reward=1.5 + shift,
        tax=0.25 - shift,
        reward_stderr=OWN_ERROR,
        tax_stderr=OWN_ERROR,
        items=scores(shift, jitter) if items else None,
        baseline=baseline,
        tasks=("qa",),
    )


def test_a_constant_difference_is_beyond_the_noise_paired_but_not_unpaired():
    worse, better = point(0.0), point(0.125)
    # paired: every item differs by exactly 0.125, so the difference's error is 0 and 0.125 >= 1.645 * 0 on each axis
    assert dominates_beyond_noise(better, worse)
    assert not dominates_beyond_noise(worse, better)
    assert noise_aware_front([worse, better]) == [False, True]
    # unpaired: 0.125 < 1.645 * sqrt(0.6455^2 + 0.6455^2) = 1.50 on each axis
    assert z_value() * math.hypot(OWN_ERROR, OWN_ERROR) == pytest.approx(1.5015, abs=1e-4)
    plain = [replace(p, items=None) for p in (worse, better)]
    assert not dominates_beyond_noise(plain[1], plain[0])
    assert noise_aware_front(plain) == [True, True]


def test_the_paired_error_is_that_of_the_per_item_differences():
    # differences alternate 0.1 and 0.2 (jitter 0.05 on one side): mean 0.15, sample sd sqrt(4 * 0.05^2 / 3),
    # error sd / 2 = 0.05 / sqrt(3) = 0.02887 per axis (one task: the tax's error is the task's)
    worse = point(0.0)
    error = 0.05 / math.sqrt(3)
    assert z_value() * error == pytest.approx(0.04749, abs=1e-5)
    assert dominates_beyond_noise(point(0.15, 0.05), worse)  # 0.15 >= 0.0475
    assert dominates_beyond_noise(point(0.048, 0.05), worse)  # 0.048 >= 0.0475
    assert not dominates_beyond_noise(point(0.047, 0.05), worse)  # 0.047 < 0.0475


def test_without_items_on_either_side_the_old_rule_applies():
    worse, better = point(0.0), point(0.125)
    for one, other in ((replace(better, items=None), worse), (better, replace(worse, items=None))):
        assert not dominates_beyond_noise(one, other)
    # today's rule still separates what its independent errors allow: 0.125 >= 1.645 * sqrt(2) * 0.05 = 0.1163
    assert dominates_beyond_noise(NoisyPoint(1.625, 0.125, 0.05, 0.05), NoisyPoint(1.5, 0.25, 0.05, 0.05))
    assert not dominates_beyond_noise(NoisyPoint(1.625, 0.125, 0.06, 0.06), NoisyPoint(1.5, 0.25, 0.06, 0.06))


def test_the_tax_falls_back_when_the_baselines_or_items_differ():
    worse = point(0.0)
    other_baseline = PerItem(tasks={"qa": ItemScores.of(KEYS, [1.0, 0.5, 0.75, 0.0])})
    assert not dominates_beyond_noise(point(0.125, baseline=other_baseline), worse)  # tax: another SFT measurement
    fewer = replace(
        point(0.125), items=PerItem(scores(0.125).reward, {"qa": ItemScores.of(range(3), [0.875, 0.625, 0.375])})
    )
    assert not dominates_beyond_noise(fewer, worse)  # tax: not the same items
    reward_only = replace(point(0.125), items=PerItem(scores(0.125).reward, {}))
    assert not dominates_beyond_noise(reward_only, worse)  # tax: no task items


def result(shift: float, *, items: bool = True, sft: bool = False) -> EvaluationResult:
    """A full evaluation whose per-item scores are ``scores(shift)`` (the SFT model's: BASELINE)."""
    per_item = scores(shift)
    if sft:
        per_item = PerItem(ItemScores.of(KEYS, [v - 1.0 for v in SPREAD]), BASELINE.tasks)
    qa = sum(per_item.tasks["qa"].values) / 4
    reward = sum(per_item.reward.values) / 4
    return EvaluationResult(
        tasks={"qa": {"acc": qa}},
        primary={"qa": qa},
        directions={"qa": True},
        seconds=1.0,
        reward=RewardScore(reward, OWN_ERROR, 4),
        stderr={"qa": {"acc": OWN_ERROR}},
        primary_stderr={"qa": OWN_ERROR},
        items=per_item if items else None,
    )


@pytest.mark.parametrize("with_items, expected", [(True, [True, False, True]), (False, [True, True, True])])
def test_the_sweep_report_front_pairs_on_the_items(tmp_path, with_items, expected):
    # A (a=0.3) and B (a=0.4) differ by 0.125 on every item of both axes. Their taxes' own errors, paired against
    # the SFT model, are 0.1021 each (differences -0.25, 0, -0.5, -0.25 to the SFT model), so unpaired the tax gap
    # 0.125 < 1.645 * sqrt(2) * 0.1021 = 0.2374 keeps A; paired, the gap has error 0 and A is dominated.
    candidates = [ma_candidate(0.0), ma_candidate(0.3), ma_candidate(0.4)]
    results = [result(0.0, sft=True, items=with_items), result(0.0, items=with_items), result(0.125, items=with_items)]
    records = [
        ResultRecord(
            candidate_id=c.id,
            candidate=c,
            result=r,
            mean_alpha=c.mean_alpha,
            sft="sft",
            aligned="aligned",
            context="ctx",
        )
        for c, r in zip(candidates, results)
    ]
    report = summarize(records, "ctx", candidates, tmp_path / "out")
    assert [row.tax for row in report.rows] == pytest.approx([0.0, 0.25, 0.125])
    if with_items:
        assert [row.tax_stderr for row in report.rows] == pytest.approx([0.0, 0.10206, 0.10206], abs=1e-5)
    assert [row.pareto for row in report.rows] == [True, False, True]
    assert [row.pareto_within_noise for row in report.rows] == expected
