"""The adaptive ratio grid on hand-made curves: which a it evaluates next, profiles along a, budget and stops."""

from __future__ import annotations

import pytest

from taxcut.errors import TaxcutError
from taxcut.spec.candidates import Candidate, ma_candidate
from taxcut.sweep.adaptive import Family, adaptive_search, next_ratios, profile_at, segment_gain
from taxcut.sweep.noise import NoisyPoint

CURVE = {0.0: NoisyPoint(0.0, 0.0), 0.5: NoisyPoint(0.9, 0.2), 1.0: NoisyPoint(1.0, 1.0)}


def test_the_next_a_bisects_the_segment_that_can_add_most_to_the_front():
    # boxes: [0, 0.5] 0.9 x 0.2 = 0.18, [0.5, 1] 0.1 x 0.8 = 0.08
    assert segment_gain(CURVE[0.0], CURVE[0.5], list_of(CURVE), (0.0, 1.0)) == pytest.approx(0.18)
    assert segment_gain(CURVE[0.5], CURVE[1.0], list_of(CURVE), (0.0, 1.0)) == pytest.approx(0.08)
    [best] = next_ratios({"MA": CURVE})
    assert (best.family, best.a) == ("MA", 0.25) and best.gain == pytest.approx(0.18)
    assert [p.a for p in next_ratios({"MA": CURVE}, count=2)] == [0.25, 0.75]


def test_a_segment_another_candidate_already_dominates_gains_little():
    profile = NoisyPoint(0.95, 0.02)  # e.g. a block profile: covers most of the box of [0, 0.5]
    [best] = next_ratios({"MA": CURVE}, [profile])
    assert best.a == 0.75  # [0.5, 1] can add (1.0 - 0.95) x 0.8 = 0.04 > [0, 0.5]'s 0.9 x 0.02 = 0.018
    assert best.gain == pytest.approx(0.04)


def test_resolution_and_tolerance_stop_the_grid():
    assert next_ratios({"MA": CURVE}, resolution=0.5) == []  # no segment wider than 0.5
    # the front's hypervolume (from the nadir (0, 1)) is 0.72: 0.18 is 25% of it, 0.08 11%
    assert next_ratios({"MA": CURVE}, tolerance=0.26) == []
    assert [p.a for p in next_ratios({"MA": CURVE}, tolerance=0.2, count=2)] == [0.25]
    flat = {0.0: NoisyPoint(1.0, 0.0), 1.0: NoisyPoint(1.0, 0.0)}
    assert next_ratios({"MA": flat}) == []  # nothing left to gain


def test_profiles_move_along_a_with_their_mean():
    pattern = [0.5, 0.7, 0.9]
    assert profile_at(pattern, 0.7) == pattern
    assert profile_at(pattern, 0.0) == [0.0, 0.0, 0.0] and profile_at(pattern, 1.0) == [1.0, 1.0, 1.0]
    for a in (0.1, 0.35, 0.8, 0.95):
        moved = profile_at(pattern, a)
        assert sum(moved) / 3 == pytest.approx(a, abs=1e-5) and all(0.0 <= v <= 1.0 for v in moved)
        assert moved == sorted(moved)  # the shape is kept: the top block still gets the most of the aligned model


def test_adaptive_search_spends_its_budget_where_the_curve_bends():
    measured: list[str] = []

    def measure(candidates):
        measured.extend(c.id for c in candidates)
        return {c.id: curve_point(c) for c in candidates}

    sft = ma_candidate(0.0)
    ma = Family("MA", lambda a: sft if a == 0 else ma_candidate(a))
    outcome = adaptive_search([ma], measure, budget=6)
    ratios = [c.alpha for c in outcome.candidates]
    assert ratios[:3] == [0.0, 0.5, 1.0]  # the start
    assert len(ratios) == 6 and len(set(measured)) == len(measured) == 6  # the budget, nothing measured twice
    assert ratios[3] == 0.25  # reward rises fastest at small a: the left half is bisected first
    assert outcome.rounds == 3


def test_families_share_their_ends_and_the_budget_covers_the_start():
    sft, aligned = ma_candidate(0.0), ma_candidate(1.0)
    ends = {0.0: sft, 1.0: aligned}
    ma = Family("MA", lambda a: ends.get(a) or ma_candidate(a))
    blocks = Family(
        "blocks",
        lambda a: ends.get(a) or Candidate(label="b", kind="blocks", alphas=profile_at([0.2, 0.5, 0.8], a)),
        (0.5,),
    )
    seen: list[str] = []

    def measure(candidates):
        seen.extend(c.id for c in candidates)
        return {c.id: curve_point(c) for c in candidates}

    outcome = adaptive_search([ma, blocks], measure, budget=4)
    assert len(outcome.candidates) == 4 and len(seen) == 4  # SFT and aligned measured once for both families
    with pytest.raises(TaxcutError, match="budget is 3, but the adaptive grid starts from 4 candidates"):
        adaptive_search([ma, blocks], measure, budget=3)


def curve_point(candidate: Candidate) -> NoisyPoint:
    """A concave front: reward a^(1/4), tax a^2."""
    a = candidate.mean_alpha
    return NoisyPoint(a**0.25, a * a)


def list_of(curve):
    return [(p.reward, p.tax) for p in curve.values()]


def test_the_budget_counts_full_evaluations_so_what_halving_saves_buys_more_candidates():
    sft = ma_candidate(0.0)
    ma = Family("MA", lambda a: sft if a == 0 else ma_candidate(a))

    def measure(candidates):
        return {c.id: curve_point(c) for c in candidates}

    shares = {}  # every candidate but the ends "dropped" at a quarter of the data

    def spent(candidates):
        return sum(shares.setdefault(c.id, 1.0 if c.alpha in (0.0, 1.0) else 0.25) for c in candidates)

    full = adaptive_search([ma], measure, budget=4)
    halved = adaptive_search([ma], measure, budget=4, spent=spent)
    assert len(full.candidates) == 4
    # 2 ends + 0.25 per other candidate: the start costs 2.25, each round 0.25, and a round needs room for a full one
    assert len(halved.candidates) == 7 and spent(halved.candidates) == pytest.approx(3.25)
