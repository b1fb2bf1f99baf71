"""Standard errors against their closed forms, merging of disjoint items, and the statistics' plain-data shape."""

from __future__ import annotations

import math

import pytest

from taxcut.evaluation.cost import EvaluationCost, count_generated, count_scored, metered
from taxcut.evaluation.measurement import Measurement
from taxcut.evaluation.metrics import corpus_bleu, mean_and_stderr
from taxcut.evaluation.stats import (
    CorpusBleu,
    Mean,
    Ratio,
    Reported,
    binomial_stderr,
    bleu_statistics,
    bootstrap_stderr,
    statistic_from_json,
)
from taxcut.evaluation.subset import DataPart, item_order, share_count


def test_binomial_error_of_a_share():
    right = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]  # 7 of 10
    stat = Mean.of(right, binary=True)
    assert stat.value == 0.7
    assert stat.stderr == pytest.approx(math.sqrt(0.7 * 0.3 / 10))
    assert binomial_stderr(0.0, 5) == 0.0 and binomial_stderr(1.0, 5) == 0.0


def test_mean_error_is_the_sample_standard_deviation_over_root_n():
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]  # sample variance 6
    stat = Mean.of(values)
    assert stat.value == 3.5
    assert stat.stderr == pytest.approx(math.sqrt(6.0 / 8))
    assert (stat.value, stat.stderr) == mean_and_stderr(values)  # the reward's error, as before
    assert Mean.of([2.5]).stderr == 0.0


def test_ratio_error_is_the_delta_method():
    pairs = [(2.0, 4.0), (3.0, 5.0), (1.0, 3.0), (6.0, 8.0)]  # (an item's NLL, its tokens)
    stat = Ratio.of(pairs)
    ratio = 12.0 / 20.0
    residuals = sum((x - ratio * y) ** 2 for x, y in pairs)
    assert stat.value == pytest.approx(ratio)
    assert stat.stderr == pytest.approx(math.sqrt(residuals / (4 * 3)) / (20.0 / 4))
    perplexity = Ratio.of(pairs, exp=True)
    assert perplexity.value == pytest.approx(math.exp(ratio))
    assert perplexity.stderr == pytest.approx(math.exp(ratio) * stat.stderr)


@pytest.mark.parametrize(
    "make",
    [
        lambda v: Mean.of(v),
        lambda v: Mean.of([float(x > 0.5) for x in v], binary=True),
        lambda v: Ratio.of([(x, 1.0 + 2 * x) for x in v]),
    ],
)
def test_disjoint_items_merge_into_the_statistic_of_both(make):
    values = [0.1, 0.9, 0.4, 0.7, 0.2, 0.8, 0.3, 0.95, 0.05]
    merged = make(values[:3]).merge(make(values[3:]))
    whole = make(values)
    assert merged.value == pytest.approx(whole.value)
    assert merged.stderr == pytest.approx(whole.stderr)


def test_bleu_from_item_statistics_equals_corpus_bleu_and_merges():
    hypotheses = ["the cat sat on the mat", "a dog ran", "hello world there", "it is raining today"]
    references = [["the cat sat on a mat"], ["a dog runs"], ["hello world"], ["it is raining"]]
    stat = bleu_statistics(hypotheses, references)
    assert stat.value == pytest.approx(corpus_bleu(hypotheses, references))
    merged = bleu_statistics(hypotheses[:2], references[:2]).merge(bleu_statistics(hypotheses[2:], references[2:]))
    assert merged.value == pytest.approx(stat.value)
    assert stat.stderr == stat.stderr and stat.stderr > 0  # bootstrapped, seeded: the same every time
    assert stat.stderr == bleu_statistics(hypotheses, references).stderr


def test_bootstrap_error_of_a_mean_is_close_to_its_closed_form():
    values = [((7 * i) % 11) / 10 for i in range(60)]
    closed = Mean.of(values).stderr
    booted = bootstrap_stderr(values, lambda items: sum(items) / len(items), resamples=400, seed=3)
    assert booted == pytest.approx(closed, rel=0.2)
    assert booted == bootstrap_stderr(values, lambda items: sum(items) / len(items), resamples=400, seed=3)


def test_statistics_round_trip_through_plain_data():
    for stat in (
        Mean.of([1, 0, 1], binary=True),
        Ratio.of([(1.0, 2.0), (2.0, 3.0)], exp=True),
        CorpusBleu(((3, 3, 2, 1, 0, 0, 3, 2, 1, 0),)),
        Reported(0.5),
    ):
        again = statistic_from_json(stat.to_json())
        assert again == stat or (isinstance(stat, Reported) and again.value == stat.value)


def test_a_measurement_merges_and_sums_up_with_errors_and_cost():
    first = Measurement(
        Mean.of([1.0, 2.0]),
        {"mc": {"acc": Mean.of([1, 0], binary=True)}},
        {"mc": "acc"},
        {"mc": True},
        EvaluationCost(10, 20, 1.0),
    )
    second = Measurement(
        Mean.of([3.0, 4.0]),
        {"mc": {"acc": Mean.of([1, 1], binary=True)}},
        {"mc": "acc"},
        {"mc": True},
        EvaluationCost(5, 7, 0.5),
    )
    both = first.merge(second)
    result = both.result()
    assert result.reward.reward == 2.5 and result.reward.samples == 4
    assert result.reward.reward_stderr == pytest.approx(mean_and_stderr([1.0, 2.0, 3.0, 4.0])[1])
    assert result.primary == {"mc": 0.75}
    assert result.primary_stderr["mc"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert result.cost == EvaluationCost(15, 27, 1.5)
    assert Measurement.from_json(both.to_json()) == both


def test_the_meter_counts_only_inside_its_block():
    count_generated(5)  # no meter: nowhere
    with metered() as meter:
        count_generated(3)
        count_scored(4)
        count_generated(2)
    count_scored(100)
    cost = meter.cost()
    assert (cost.generated_tokens, cost.scored_tokens, cost.tokens) == (5, 4, 9)


def test_subsets_are_seeded_nested_and_cover_the_items():
    order = item_order("reward", 20, seed=0)
    assert sorted(order) == list(range(20)) and order == item_order("reward", 20, seed=0)
    assert order != item_order("reward", 20, seed=1) and order != item_order("mc", 20, seed=0)
    parts = [DataPart(0, 0.125), DataPart(0.125, 0.25), DataPart(0.25, 0.5), DataPart(0.5, 1.0)]
    items = [part.items("reward", 20) for part in parts]
    assert [len(i) for i in items] == [3, 2, 5, 10]  # ceil(20 s): 3, 5, 10, 20
    assert sorted(i for chunk in items for i in chunk) == list(range(20))
    assert set(items[0]) == set(order[:3]) and DataPart().items("reward", 20) is None
    assert share_count(0.125, 4) == 1 and share_count(1.0, 7) == 7


def test_cautious_errors_for_decisions_on_few_items():
    from taxcut.evaluation.stats import cautious_stderr

    assert Mean.of([1, 1, 1], binary=True).stderr == 0.0  # the closed form: 3 of 3 looks exact
    assert cautious_stderr(Mean.of([1, 1, 1], binary=True)) == pytest.approx(math.sqrt(0.8 * 0.2 / 3))  # 4/5
    assert cautious_stderr(Mean.of([2.0])) == math.inf and cautious_stderr(Ratio.of([(1.0, 2.0)])) == math.inf
    assert cautious_stderr(Mean.of([1.0, 3.0])) == Mean.of([1.0, 3.0]).stderr
