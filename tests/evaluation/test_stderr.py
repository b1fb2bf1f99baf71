"""Standard errors of a real evaluation against their closed forms, parts of the data, and the cost it records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from taxcut.evaluation.loading import load_causal_lm, load_tokenizer
from taxcut.evaluation.subset import DataPart
from taxcut.evaluation.suite import EvaluationSuite
from taxcut.spec.evaluation import EvaluationSpec

TESTS = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def suite_and_model(llama_pair, tmp_path_factory):
    data = tmp_path_factory.mktemp("stderr")
    (data / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 12)))
    (data / "mc.jsonl").write_text(
        "".join(
            json.dumps({"context": f"w{i}", "choices": [f"w{i + 1}", f"w{i + 7}"], "answer": 0}) + "\n"
            for i in range(4, 24)
        )
    )
    (data / "text.jsonl").write_text(
        "".join(json.dumps({"text": " ".join(f"w{j}" for j in range(i, i + 6))}) + "\n" for i in range(4, 14))
    )
    spec = EvaluationSpec.model_validate(
        {
            "reward": {
                "prompts": str(data / "prompts.jsonl"),
                "function": f"{TESTS / 'rewards.py'}:prompt_number",
                "max_new_tokens": 3,
            },
            "tasks": [
                {"name": "mc", "type": "multiple_choice", "path": str(data / "mc.jsonl")},
                {"name": "text", "type": "perplexity", "path": str(data / "text.jsonl")},
            ],
        }
    )
    sft = llama_pair[0]
    return EvaluationSuite.from_spec(spec), load_causal_lm(sft), load_tokenizer(sft)


def test_errors_match_their_closed_forms(suite_and_model):
    suite, model, tokenizer = suite_and_model
    result = suite.evaluate(model, tokenizer)
    # the reward callable scores the prompt's number, 4 ... 11: mean 7.5, sample variance 6, n = 8
    assert result.reward.reward == 7.5 and result.reward.samples == 8
    assert result.reward.reward_stderr == pytest.approx(math.sqrt(6 / 8))
    # accuracy: binomial, sqrt(p (1 - p) / n) over the 20 questions
    accuracy = result.tasks["mc"]["acc"]
    assert result.stderr["mc"]["acc"] == pytest.approx(math.sqrt(accuracy * (1 - accuracy) / 20))
    assert result.primary_stderr == {"mc": result.stderr["mc"]["acc"], "text": result.stderr["text"]["nll"]}
    assert result.stderr["text"]["nll"] > 0
    assert result.stderr["text"]["perplexity"] == pytest.approx(
        result.tasks["text"]["perplexity"] * result.stderr["text"]["nll"]
    )


def test_parts_of_the_data_add_up_to_all_of_it(suite_and_model):
    suite, model, tokenizer = suite_and_model
    whole = suite.measure(model, tokenizer)
    first = suite.measure(model, tokenizer, DataPart(0.0, 0.25))
    rest = suite.measure(model, tokenizer, DataPart(0.25, 1.0))
    assert first.reward.count == 2 and first.tasks["mc"]["acc"].count == 5  # ceil(8/4), ceil(20/4)
    merged, full = first.merge(rest).result(), whole.result()
    assert merged.reward.reward == pytest.approx(full.reward.reward)
    assert merged.reward.reward_stderr == pytest.approx(full.reward.reward_stderr)
    for task in ("mc", "text"):
        assert merged.tasks[task] == pytest.approx(full.tasks[task], rel=1e-5)
        assert merged.stderr[task] == pytest.approx(full.stderr[task], rel=1e-4)
    # the cost account adds up: the parts generated and read the same tokens as the whole
    assert whole.cost.generated_tokens > 0 and whole.cost.scored_tokens > 0
    assert first.cost.tokens + rest.cost.tokens == whole.cost.tokens
    assert merged.cost.tokens == whole.cost.tokens
