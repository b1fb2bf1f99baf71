"""Halving decides on paired differences: the cautious paired error by hand, dominance and the best-case gain on
hand-made points, and a halving run that drops a candidate only pairing can tell apart."""

from __future__ import annotations

import math

import pytest

from taxcut.evaluation.measurement import Measurement
from taxcut.evaluation.paired import ItemScores, PerItem, cautious_paired_error
from taxcut.evaluation.stats import Mean
from taxcut.evaluation.subset import DataPart
from taxcut.spec.candidates import ma_candidate
from taxcut.sweep.halving import best_case_gain, successive_halving
from taxcut.sweep.noise import NoisyPoint, dominates_beyond_noise, z_value
from tests.sweep.test_halving import Book, Evaluator


def _scores(values):
    return ItemScores.of(range(len(values)), values)


def test_cautious_paired_error_adds_one_pseudo_difference_each_way_as_large_as_the_largest_seen():
    a, b = _scores([1, 1, 1, 0]), _scores([0, 1, 1, 0])
    # differences 1, 0, 0, 0 and the pseudo-differences +1, -1 (yes/no scores: range 1): mean 1/6
    d = [1, 0, 0, 0, 1, -1]
    mean = sum(d) / 6
    expected = math.sqrt(sum((x - mean) ** 2 for x in d) / 5 / 6)
    assert cautious_paired_error(a, b) == pytest.approx(expected)
    # two models that agree on every item so far are not read as exactly equal
    same = _scores([1.0] * 8)
    assert cautious_paired_error(same, same) == pytest.approx(math.sqrt(2 / 9 / 10))
    # graded scores: the largest difference seen, here 1.5
    graded = cautious_paired_error(_scores([3.0, 0.5, 0.0]), _scores([2.0, -1.0, 0.5]))
    d = [1.0, 1.5, -0.5, 1.5, -1.5]
    mean = sum(d) / 5
    assert graded == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in d) / 4 / 5))
    # graded scores that agree everywhere: the range of both models' scores, here 3.0 - 0.0
    agreeing = cautious_paired_error(_scores([3.0, 0.5, 0.0]), _scores([3.0, 0.5, 0.0]))
    d = [0.0, 0.0, 0.0, 3.0, -3.0]
    mean = sum(d) / 5
    assert agreeing == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in d) / 4 / 5))
    assert math.isinf(cautious_paired_error(_scores([1.0]), _scores([0.0])))
    assert math.isnan(cautious_paired_error(ItemScores.of([0], [1.0]), ItemScores.of([1], [1.0])))


def _point(rewards, accuracy, baseline_accuracy, *, reward_stderr=1.0, tax_stderr=0.1):
    tasks = PerItem(None, {"mc": _scores(baseline_accuracy)})
    items = PerItem(_scores(rewards), {"mc": _scores(accuracy)})
    tax = sum(baseline_accuracy) / len(baseline_accuracy) - sum(accuracy) / len(accuracy)
    return NoisyPoint(
        sum(rewards) / len(rewards), tax, reward_stderr, tax_stderr, items=items, baseline=tasks, tasks=("mc",)
    )


def test_at_a_stage_dominance_pairs_cautiously_and_agreement_is_not_certainty():
    noise = [(-2.0 if i % 2 else 2.0) + 0.1 * i for i in range(40)]  # the items' common difficulty
    questions = [1.0] * 30 + [0.0] * 10
    worse = _point(noise, questions, questions)
    better = _point([x + 0.5 for x in noise], questions, questions)
    # unpaired, a 0.5 lead is nothing next to errors of 1 (z * sqrt(2) = 2.3)
    plain_better = NoisyPoint(better.reward, better.tax, 1.0, 0.1)
    plain_worse = NoisyPoint(worse.reward, worse.tax, 1.0, 0.1)
    assert not dominates_beyond_noise(plain_better, plain_worse)
    # paired at full data: every item is 0.5 apart and the tax is the same on every item: beyond the noise
    assert dominates_beyond_noise(better, worse)
    # a stage's cautious rule: agreeing on all 40 questions is not read as an exact tie on tax, so no dominance
    assert not dominates_beyond_noise(better, worse, cautious=True)
    # ... and once the better one is also right on 8 more questions it does dominate
    more = [1.0] * 38 + [0.0] * 2
    better_taxed = _point([x + 0.5 for x in noise], more, questions)
    assert dominates_beyond_noise(better_taxed, worse, cautious=True)
    # 3 of 40 questions one way is not enough at a stage (an exact sign test says p = 1/8)
    three = [1.0] * 33 + [0.0] * 7
    assert not dominates_beyond_noise(_point([x + 0.5 for x in noise], three, questions), worse, cautious=True)


def test_best_case_gain_sets_a_paired_rival_against_the_corner_by_their_paired_error():
    rewards = [float(i % 5) for i in range(20)]
    questions = [1.0] * 10 + [0.0] * 10
    point = _point(rewards, questions, questions, reward_stderr=0.3, tax_stderr=0.05)
    rival = _point([x + 0.2 for x in rewards], questions, questions, reward_stderr=0.3, tax_stderr=0.05)
    other = NoisyPoint(1.0, 0.3)  # measured elsewhere: cannot pair, stays where it is
    z = z_value()
    unpaired = best_case_gain(point, [NoisyPoint(rival.reward, rival.tax), other])
    paired = best_case_gain(point, [rival, other], cautious=True)
    # the rival moves by z (own error - paired error) on each axis, toward better
    reward_error = cautious_paired_error(rival.items.reward, point.items.reward)
    tax_error = cautious_paired_error(rival.items.tasks["mc"], point.items.tasks["mc"])
    moved = NoisyPoint(rival.reward + z * (0.3 - reward_error), rival.tax - z * (0.05 - tax_error))
    by_hand = best_case_gain(point, [moved, other])
    assert paired == pytest.approx(by_hand)
    assert paired < unpaired  # a constant lead of 0.2 on every item: the point's best case adds less
    # nothing pairs: the rule of independent errors, as before
    assert best_case_gain(point, [NoisyPoint(rival.reward, rival.tax), other], cautious=True) == unpaired


ITEMS = 64
# the candidates' per-item rewards share a large common part (item difficulty); they differ by a constant lead
LEAD = {0.0: 0.0, 0.4: 0.6, 0.8: 0.0}


def paired_measure(candidate, part: DataPart) -> Measurement:
    rewards = part.items("reward", ITEMS) or list(range(ITEMS))
    questions = part.items("mc", ITEMS) or list(range(ITEMS))
    lead = LEAD[candidate.alpha]
    reward_values = [(3.0 if (7 * i) % 2 else -3.0) + 0.01 * i + lead for i in rewards]
    right = [float(candidate.alpha != 0.8 or i % 4 == 0) for i in questions]  # 'behind' misses 3 in 4
    return Measurement(
        Mean.of(reward_values),
        {"mc": {"acc": Mean.of(right, binary=True)}},
        {"mc": "acc"},
        {"mc": True},
        items=PerItem(ItemScores.of(rewards, reward_values), {"mc": ItemScores.of(questions, right)}),
    )


def test_halving_drops_what_only_the_paired_difference_shows_and_keeps_the_full_data_result_exact():
    sft, ahead, behind = (ma_candidate(a) for a in LEAD)
    book, evaluate = Book(), Evaluator()
    evaluate_paired = _with(evaluate, paired_measure)
    outcome = successive_halving([ahead, behind], sft, evaluate_paired, book)
    # 'ahead' leads 'behind' by 0.6 on every prompt and is right on every question, 'behind' on a quarter:
    # with rewards of +-3 per item the unpaired errors (about 3/sqrt(8) at the first stage) hide the lead
    assert outcome.dropped.get(behind.id) == 0.125
    assert ahead.id not in outcome.dropped
    full, direct = book.full(ahead.id), paired_measure(ahead, DataPart()).result()
    assert full.items == direct.items
    assert full.reward.reward == pytest.approx(direct.reward.reward, abs=1e-12)
    # the same made-up data without the per-item scores: nothing is dropped at the first stage
    book, evaluate = Book(), Evaluator()
    unpaired = successive_halving([ahead, behind], sft, _with(evaluate, _without_items(paired_measure)), book)
    assert unpaired.dropped.get(behind.id) != 0.125


def _with(evaluator: Evaluator, measure):
    def evaluate(candidates, part):
        for candidate in candidates:
            evaluator.calls.append((candidate.id, part.start, part.stop))
            yield candidate, measure(candidate, part)

    return evaluate


def _without_items(measure):
    def plain(candidate, part):
        m = measure(candidate, part)
        return Measurement(m.reward, m.tasks, m.primary_metrics, m.directions, m.cost, None)

    return plain
