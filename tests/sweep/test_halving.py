"""Successive halving on made-up measurements: what it drops, what it never drops, and resuming."""

from __future__ import annotations

import pytest

from taxcut.evaluation.measurement import Measurement
from taxcut.evaluation.result import EvaluationResult
from taxcut.evaluation.stats import Mean
from taxcut.evaluation.subset import DataPart
from taxcut.spec.candidates import Candidate, ma_candidate
from taxcut.sweep.halving import HalvingSettings, stage_context, successive_halving
from taxcut.sweep.noise import NoisyPoint

ITEMS = 64
# (mean reward, accuracy) of each made-up candidate; the SFT model's accuracy is 0.5, so tax = 0.5 - accuracy
TRUTH = {0.0: (0.0, 0.5), 0.3: (2.1, 0.7), 0.6: (0.2, 0.1), 0.9: (2.0, 1.0)}
SFT, GOOD, DOMINATED, BEST_TAX = (ma_candidate(a) for a in TRUTH)


def fake_measure(candidate: Candidate, part: DataPart) -> Measurement:
    """Each item's reward is the candidate's mean +- 0.3; item i is right when (37 i mod 64) / 64 < its accuracy."""
    reward, accuracy = TRUTH[candidate.alpha]
    rewards = part.items("reward", ITEMS) or list(range(ITEMS))
    questions = part.items("mc", ITEMS) or list(range(ITEMS))
    return Measurement(
        Mean.of([reward + (0.3 if i % 2 else -0.3) for i in rewards]),
        {"mc": {"acc": Mean.of([float((37 * i) % ITEMS < accuracy * ITEMS) for i in questions], binary=True)}},
        {"mc": "acc"},
        {"mc": True},
    )


class Book:
    """An in-memory results file."""

    def __init__(self):
        self.records: dict[tuple[str, float], Measurement] = {}

    def full(self, candidate_id):
        found = self.records.get((candidate_id, 1.0))
        return found.result() if found is not None else None

    def stage(self, candidate_id, share):
        return self.records.get((candidate_id, share))

    def shares(self, candidate_id):
        return sorted(s for c, s in self.records if c == candidate_id and s < 1.0)

    def add(self, candidate, measurement, share):
        assert (candidate.id, share) not in self.records, "measured twice"
        self.records[(candidate.id, share)] = measurement


class Evaluator:
    """The batch function: records every (candidate, part) it measures; may be told to die after some."""

    def __init__(self, die_after: int | None = None):
        self.calls: list[tuple[str, float, float]] = []
        self.die_after = die_after

    def __call__(self, candidates, part):
        for candidate in candidates:
            if self.die_after is not None and len(self.calls) >= self.die_after:
                raise KeyboardInterrupt
            self.calls.append((candidate.id, part.start, part.stop))
            yield candidate, fake_measure(candidate, part)


def test_a_candidate_dominated_beyond_its_error_bars_is_dropped_and_the_sft_model_never_is():
    book, evaluate = Book(), Evaluator()
    outcome = successive_halving([GOOD, DOMINATED, BEST_TAX], SFT, evaluate, book)
    assert outcome.dropped == {DOMINATED.id: 0.125}  # at the first stage, on 8 of the 64 items
    # the SFT model is dominated beyond the noise by BEST_TAX (reward +2, tax -0.5), yet measured in full
    assert SFT.id not in outcome.dropped and book.full(SFT.id) is not None
    assert {c.id for c in outcome.finished} == {SFT.id, GOOD.id, BEST_TAX.id}
    assert [s for c, s in book.records if c == DOMINATED.id] == [0.125]
    # survivors grew by the items they had not seen: 1/8, then 1/8 more, 1/4 more, 1/2 more
    assert [(start, stop) for cid, start, stop in evaluate.calls if cid == GOOD.id] == [
        (0.0, 0.125),
        (0.125, 0.25),
        (0.25, 0.5),
        (0.5, 1.0),
    ]
    # ... and their full result is that of all the items, with its errors
    full, direct = book.full(GOOD.id), fake_measure(GOOD, DataPart()).result()
    assert full.reward.reward == pytest.approx(direct.reward.reward) and full.reward.samples == ITEMS
    assert full.reward.reward_stderr == pytest.approx(direct.reward.reward_stderr)
    assert full.primary == pytest.approx(direct.primary)


def test_an_incumbent_measured_in_full_drops_a_newcomer():
    book = Book()
    successive_halving([GOOD], SFT, Evaluator(), book)
    evaluate = Evaluator()
    outcome = successive_halving([DOMINATED], SFT, evaluate, book, incumbents=[NoisyPoint(2.1, -0.2, 0.04, 0.06)])
    assert outcome.dropped == {DOMINATED.id: 0.125}
    assert evaluate.calls == [(DOMINATED.id, 0.0, 0.125)]  # the SFT model's stages are in the book already


def test_a_killed_halving_resumes_and_redoes_nothing():
    book = Book()
    killed = Evaluator(die_after=6)
    with pytest.raises(KeyboardInterrupt):
        successive_halving([GOOD, DOMINATED, BEST_TAX], SFT, killed, book)
    again = Evaluator()
    outcome = successive_halving([GOOD, DOMINATED, BEST_TAX], SFT, again, book)
    assert not set(killed.calls) & set(again.calls)  # nothing measured before the kill is measured again
    assert outcome.dropped == {DOMINATED.id: 0.125}
    fresh = Book()
    assert successive_halving([GOOD, DOMINATED, BEST_TAX], SFT, Evaluator(), fresh).dropped == outcome.dropped
    assert {k: m.result().primary for k, m in fresh.records.items()} == {
        k: m.result().primary for k, m in book.records.items()
    }
    third = Evaluator()
    successive_halving([GOOD, DOMINATED, BEST_TAX], SFT, third, book)
    assert third.calls == []  # a finished halving has nothing left to do


def test_the_ladder_and_the_stage_contexts():
    assert HalvingSettings().shares() == [0.125, 0.25, 0.5, 1.0]
    assert HalvingSettings(start=0.1, factor=3).shares() == [0.1, 0.3, 0.9, 1.0]
    assert stage_context("abc", 1.0, 0) == "abc"
    assert len({stage_context("abc", 0.125, 0), stage_context("abc", 0.25, 0), stage_context("abc", 0.125, 1)}) == 3


def test_a_result_without_errors_reads_as_exact():
    result = EvaluationResult(tasks={"mc": {"acc": 0.4}}, primary={"mc": 0.4}, directions={"mc": True}, seconds=0.0)
    from taxcut.sweep.halving import noisy_point

    point = noisy_point(result, result)
    assert (point.tax, point.tax_stderr) == (0.0, 0.0)


def test_a_resumed_halving_replays_its_decisions_on_the_stages():
    """A candidate dropped at 1/8 by a rival that looked better on the first items than on all of them stays
    dropped when the sweep runs again (the rival, finished by then, competes with its 1/8 stage, as it did)."""
    sprinter, dropped = ma_candidate(0.45), ma_candidate(0.15)
    early = set(DataPart(0.0, 0.125).items("reward", ITEMS))

    def measure(candidate, part):
        if candidate.id not in (sprinter.id, dropped.id):
            return fake_measure(candidate, part)
        items = part.items("reward", ITEMS) or list(range(ITEMS))
        questions = part.items("mc", ITEMS) or list(range(ITEMS))
        if candidate.id == sprinter.id:  # reward 3 on the first eighth of the items, 0 on the rest; always right
            return Measurement(
                Mean.of([3.0 if i in early else 0.0 for i in items]),
                {"mc": {"acc": Mean.of([1.0 for _ in questions], binary=True)}},
                {"mc": "acc"},
                {"mc": True},
            )
        return Measurement(
            Mean.of([1.0 + (0.1 if i % 2 else -0.1) for i in items]),  # reward 1, the SFT's accuracy
            {"mc": {"acc": Mean.of([float(i % 2) for i in questions], binary=True)}},
            {"mc": "acc"},
            {"mc": True},
        )

    def evaluate(candidates, part):
        for candidate in candidates:
            calls.append(candidate.id)
            yield candidate, measure(candidate, part)

    book, calls = Book(), []
    first = successive_halving([sprinter, dropped], SFT, evaluate, book)
    assert first.dropped == {dropped.id: 0.125}
    assert book.full(sprinter.id).reward.reward == pytest.approx(3.0 / 8)  # on all the data it does not dominate
    calls.clear()
    again = successive_halving([sprinter, dropped], SFT, evaluate, book)
    assert again.dropped == first.dropped and calls == []


# ---- the tolerance: candidates whose best case cannot add to the front ----------------------------------------


def test_best_case_gain_on_hand_made_points():
    from taxcut.sweep.halving import best_case_gain

    others = [NoisyPoint(0.0, 0.0), NoisyPoint(1.0, 0.5)]  # nadir (0, 0.5) with the point below; front area 0
    # a point at (0.5, 0.25), exact: it adds its box 0.5 x 0.25 to a front of area 0 -> all of it
    assert best_case_gain(NoisyPoint(0.5, 0.25), others) == pytest.approx(1.0)
    front = [NoisyPoint(0.0, 0.0), NoisyPoint(0.9, 0.1), NoisyPoint(1.0, 0.5)]
    # (0.9, 0.3) is dominated by (0.9, 0.1); with errors its corner is (0.9 + z 0.01, 0.3 - z 0.01)
    z = 1.6448536269514722
    corner = (0.9 + z * 0.01, 0.3 - z * 0.01)
    whole = 0.9 * 0.4 + (corner[0] - 0.9) * (0.5 - corner[1])  # from the nadir (0, 0.5)
    expected = (corner[0] - 0.9) * (0.5 - corner[1]) / whole
    assert best_case_gain(NoisyPoint(0.9, 0.3, 0.01, 0.01), front) == pytest.approx(expected)
    assert best_case_gain(NoisyPoint(0.9, 0.3, float("inf"), 0.0), front) == 1.0  # one item: anything is possible


def tied_measure(candidate: Candidate, part: DataPart) -> Measurement:
    """GOOD as in TRUTH; RUNNER_UP ties its reward within the noise but pays 0.5 more tax; TWIN is GOOD's twin."""
    if candidate.id in (RUNNER_UP.id, TWIN.id):
        rewards = part.items("reward", ITEMS) or list(range(ITEMS))
        questions = part.items("mc", ITEMS) or list(range(ITEMS))
        reward, accuracy = (2.0, 0.2) if candidate.id == RUNNER_UP.id else (2.1, 0.7)
        return Measurement(
            Mean.of([reward + (0.3 if i % 2 else -0.3) for i in rewards]),
            {"mc": {"acc": Mean.of([float((37 * i) % ITEMS < accuracy * ITEMS) for i in questions], binary=True)}},
            {"mc": "acc"},
            {"mc": True},
        )
    return fake_measure(candidate, part)


RUNNER_UP, TWIN = ma_candidate(0.45), ma_candidate(0.35)


def tied_evaluator(calls):
    def evaluate(candidates, part):
        for candidate in candidates:
            calls.append((candidate.id, part.start, part.stop))
            yield candidate, tied_measure(candidate, part)

    return evaluate


def test_a_candidate_that_ties_on_reward_but_cannot_add_to_the_front_is_dropped_only_with_a_tolerance():
    strict = successive_halving([GOOD, RUNNER_UP], SFT, tied_evaluator([]), Book(), HalvingSettings(tolerance=0.0))
    assert strict.dropped == {}  # not dominated beyond the noise: its reward is within the noise of GOOD's
    book, calls = Book(), []
    loose = successive_halving([GOOD, RUNNER_UP], SFT, tied_evaluator(calls), book, HalvingSettings())
    assert loose.dropped == {RUNNER_UP.id: 0.25}  # its best case on a quarter of the items adds 0.3% of the front
    assert book.full(GOOD.id) is not None and book.full(SFT.id) is not None
    assert book.full(RUNNER_UP.id) is None and max(s for c, _, s in calls if c == RUNNER_UP.id) < 1.0


def test_of_two_twins_only_one_is_dropped_and_what_is_kept_is_never_dropped():
    book = Book()
    # on the first eighth each twin's best case adds ~72% to the other's front: under a tolerance of 80% both would
    # go if judged together; one at a time, the second then stands alone and adds all of its front
    outcome = successive_halving([GOOD, TWIN], SFT, tied_evaluator([]), book, HalvingSettings(tolerance=0.8))
    assert list(outcome.dropped.values()) == [0.125]
    assert sum(book.full(c.id) is not None for c in (GOOD, TWIN)) == 1
    kept = successive_halving(
        [GOOD, RUNNER_UP], SFT, tied_evaluator([]), Book(), HalvingSettings(tolerance=0.5), keep={RUNNER_UP.id}
    )
    assert RUNNER_UP.id not in kept.dropped  # the aligned model is kept like the SFT model


def test_the_spec_and_the_function_agree_on_the_default_tolerance():
    from taxcut.spec.evaluation import HalvingSpec

    assert HalvingSpec().tolerance == HalvingSettings().tolerance == 0.01
