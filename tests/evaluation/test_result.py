"""An evaluation's result as typed data, and its plain-data shape (``taxcut eval --json``, results files)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from taxcut.evaluation.result import EvaluationResult, RewardScore


def test_plain_data_shape_and_back():
    result = EvaluationResult(
        tasks={"mc": {"acc": 0.5}},
        primary={"mc": 0.5},
        directions={"mc": True},
        seconds=2.0,
        reward=RewardScore.from_scores({"reward": 1.5, "reward_stderr": 0.25, "samples": 4.0}),
    )
    data = result.to_dict()
    assert list(data) == ["tasks", "primary", "reward", "directions", "seconds"]
    assert data["reward"] == {"reward": 1.5, "reward_stderr": 0.25, "samples": 4}
    assert EvaluationResult.from_dict(data) == result
    without = EvaluationResult(tasks={}, primary={}, directions={}, seconds=0.0)
    assert "reward" not in without.to_dict() and EvaluationResult.from_dict(without.to_dict()) == without


def test_a_mistyped_field_is_refused():
    with pytest.raises(ValidationError, match="primary"):
        EvaluationResult.from_dict({"tasks": {}, "primary": {"mc": "x"}, "directions": {}, "seconds": 0.0})
