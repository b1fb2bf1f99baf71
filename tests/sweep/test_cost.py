"""The cost account adds up: what was spent, and what evaluating the same candidates in full would cost."""

from __future__ import annotations

import pytest

from taxcut.evaluation.cost import EvaluationCost
from taxcut.sweep.cost import cost_account


def test_the_cost_account_adds_up():
    entries = [
        (EvaluationCost(100, 400, 2.0), 1.0),
        (EvaluationCost(120, 380, 2.5), 1.0),
        (EvaluationCost(15, 50, 0.25), 0.125),
        (None, 1.0),
    ]
    account = cost_account(entries)
    assert account.spent == EvaluationCost(235, 830, 4.75)
    assert account.full == EvaluationCost(100 + 120 + 120, 400 + 380 + 400, 2.0 + 2.5 + 2.0)  # the dropped one x 8
    assert (account.candidates, account.partial, account.unknown) == (4, 1, 1)
    assert account.saving == pytest.approx(1 - 1065 / 1520)
    line = account.render()
    assert "235 generated + 830 scored tokens" in line and "saved 30%" in line and "1 results have no" in line


def test_a_sweep_in_full_saves_nothing():
    account = cost_account([(EvaluationCost(10, 20, 1.0), 1.0)] * 3)
    assert account.spent == account.full == EvaluationCost(30, 60, 3.0)
    assert account.saving == 0.0 and "saved" not in account.render()
