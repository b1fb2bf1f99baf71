"""Greedy soup selection: scores read in their direction, so a lower-is-better metric keeps what lowers it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from models import VOCAB, build_successor_model, load_weights
from safetensors.torch import save_file

from taxcut import TaxcutError
from taxcut.evaluation.result import EvaluationResult, RewardScore
from taxcut.spec.evaluation import EvaluationSpec
from taxcut.tuning.greedy_soup import greedy_soup, score_of


@pytest.fixture(scope="module")
def ingredients(tmp_path_factory) -> list[Path]:
    """bad (predicts the predecessor, confidently), good (the successor model) and its twin, in that order."""
    root = tmp_path_factory.mktemp("ingredients")
    good = build_successor_model(root / "good")
    twin = Path(shutil.copytree(good, root / "twin"))
    bad = Path(shutil.copytree(good, root / "bad"))
    tensors = load_weights(bad)
    head = torch.zeros(VOCAB, VOCAB)
    for token in range(5, VOCAB):
        head[token - 1, token] = 30.0 / VOCAB**0.5
    tensors["lm_head.weight"] = head
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    return [bad, good, twin]


@pytest.mark.parametrize("score", ["text.nll", "text.perplexity", "text"])
def test_a_lower_is_better_metric_keeps_the_better_ingredient(ingredients, tmp_path, score):
    bad, good, twin = ingredients
    text = tmp_path / "text.jsonl"  # successor chains: the good model's nll is low, the bad one's high
    text.write_text(
        "".join(json.dumps({"text": " ".join(f"w{j}" for j in range(i, i + 6))}) + "\n" for i in range(5, 25))
    )
    evaluation = EvaluationSpec.model_validate({"tasks": [{"name": "text", "type": "perplexity", "path": str(text)}]})
    soup = greedy_soup([bad, good, twin], evaluation, score, device="cpu")
    assert soup.chosen == [good, twin]
    assert soup.individual[str(good)] > soup.individual[str(bad)]  # higher is better, whatever the metric
    assert [(Path(folder).name, accepted) for folder, _, accepted in soup.trials] == [("twin", True), ("bad", False)]


def made_up_result() -> EvaluationResult:
    return EvaluationResult(
        tasks={"mc": {"acc": 0.75, "acc_norm": 0.5}, "text": {"nll": 2.0, "perplexity": 7.4}},
        primary={"mc": 0.75, "text": 2.0},
        directions={"mc": True, "text": False},
        seconds=1.0,
        reward=RewardScore(reward=0.3, reward_stderr=0.1, samples=8),
    )


def test_scores_are_oriented_so_that_higher_is_better():
    result = made_up_result()
    assert score_of(result, "reward") == 0.3
    assert score_of(result, "mc") == 0.75 and score_of(result, "mc.acc_norm") == 0.5
    assert score_of(result, "text") == -2.0 and score_of(result, "text.nll") == -2.0
    assert score_of(result, "text.perplexity") == -7.4
    assert score_of(result, "tasks") == pytest.approx((0.75 - 2.0) / 2)


def test_a_score_the_evaluation_cannot_give_is_named():
    result = made_up_result()
    with pytest.raises(TaxcutError, match=r"score 'wiki': no task 'wiki' in the evaluation \(mc, text\)"):
        score_of(result, "wiki")
    with pytest.raises(TaxcutError, match=r"score 'text.bleu': task 'text' has no metric 'bleu' \(nll, perplexity\)"):
        score_of(result, "text.bleu")


def test_a_bad_score_fails_before_any_model_loads(tmp_path):
    evaluation = EvaluationSpec.model_validate(
        {"tasks": [{"name": "text", "type": "perplexity", "path": str(tmp_path / "missing.jsonl")}]}
    )
    with pytest.raises(TaxcutError, match="score 'reward': the evaluation has no 'reward' section"):
        greedy_soup([tmp_path / "a", tmp_path / "b"], evaluation, "reward")
    with pytest.raises(TaxcutError, match="no task 'wiki' in the evaluation"):
        greedy_soup([tmp_path / "a", tmp_path / "b"], evaluation, "wiki.nll")
