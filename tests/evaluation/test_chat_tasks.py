"""Chat-format tax tasks (``messages`` rendered through the model's chat template) and the chosen primary metric.

The successor model (tests/models.py) predicts w{i+1} after w{i}, so what it generates or prefers shows exactly
which text it was given: the chat template here appends ``w30`` as its generation prompt, so a chat is answered
from w31 on, while the same words as plain text are answered from the word after them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from models import build_successor_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from taxcut import TaxcutError
from taxcut.evaluation.suite import EvaluationSuite
from taxcut.evaluation.tasks import BleuTask, GenerationTask, MultipleChoiceTask
from taxcut.spec.evaluation import EvaluationSpec
from taxcut.sweep.pareto import tax

TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w30 {% endif %}"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    folder = build_successor_model(tmp_path_factory.mktemp("chat") / "model")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    return AutoModelForCausalLM.from_pretrained(folder).eval(), tokenizer


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chat(*contents: str) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(contents)]


def test_generation_task_renders_messages_through_the_chat_template(chat_model, tmp_path):
    records = [
        {"messages": chat("w1 w2"), "answer": "w31 w32"},  # the template's generation prompt ends with w30
        {"messages": chat("w5", "w9", "w1"), "answer": "w31 w32"},  # a whole conversation, rendered once
        {"prompt": "w1 w2", "answer": "w3 w4"},  # plain text beside chats in one file
    ]
    task = GenerationTask("chat", write_jsonl(tmp_path / "gen.jsonl", records), max_new_tokens=2)
    assert task.evaluate(*chat_model)["exact_match"] == 1.0


def test_bleu_task_renders_messages(chat_model, tmp_path):
    records = [{"messages": chat("w7"), "reference": "w31 w32 w33 w34"}]
    task = BleuTask("bleu", write_jsonl(tmp_path / "bleu.jsonl", records), max_new_tokens=4)
    assert task.evaluate(*chat_model)["bleu"] == pytest.approx(1.0)


def test_multiple_choice_task_renders_messages(chat_model, tmp_path):
    records = [
        {"messages": chat("w1 w2"), "choices": ["w3", "w31"], "answer": "w31"},  # right only after the template
        {"context": "w1 w2", "choices": ["w3", "w31"], "answer": "w3"},  # plain context: the word after w2
    ]
    task = MultipleChoiceTask("mc", write_jsonl(tmp_path / "mc.jsonl", records))
    assert task.evaluate(*chat_model) == {"acc": 1.0, "acc_norm": 1.0}


def test_malformed_messages_in_a_task_name_the_line(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"messages": [{"role": "user"}], "answer": "x"}])
    with pytest.raises(TaxcutError, match=r"gen.jsonl, line 1: 'messages' item 1: 'content' must be text"):
        GenerationTask("g", path)


def test_messages_without_a_chat_template_name_the_record(chat_model, tmp_path):
    model = chat_model[0]
    plain = PreTrainedTokenizerFast.from_pretrained(model.name_or_path)
    plain.chat_template = None
    task = GenerationTask("g", write_jsonl(tmp_path / "gen.jsonl", [{"messages": chat("w1"), "answer": "w2"}]))
    with pytest.raises(
        TaxcutError,
        match="gen.jsonl, record 1: a prompt is given as 'messages' but the model's tokenizer has no chat template",
    ):
        task.evaluate(model, plain)


def test_contains_metric(chat_model, tmp_path):
    records = [
        {"prompt": "w1", "answer": "w3"},  # the output w2 w3 w4 contains w3
        {"prompt": "w1", "answer": "w4 w3"},  # not in that order
        {"prompt": "w10", "answers": ["w9", "w12"]},
    ]
    task = GenerationTask(
        "g", write_jsonl(tmp_path / "gen.jsonl", records), max_new_tokens=3, primary_metric="contains"
    )
    assert task.evaluate(*chat_model)["contains"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("task_type", "metric", "valid"),
    [
        ("generation", "acc", "exact_match, f1, contains"),
        ("multiple_choice", "f1", "acc, acc_norm"),
        ("bleu", "exact_match", "bleu"),
        ("perplexity", "accuracy", "nll, perplexity"),
    ],
)
def test_an_inapplicable_metric_is_refused_listing_the_valid_ones(tmp_path, task_type, metric, valid):
    from taxcut.spec.merge import spec_from_dict

    data = {"tasks": [{"name": "t", "type": task_type, "path": str(tmp_path / "t.jsonl"), "metric": metric}]}
    with pytest.raises(TaxcutError) as caught:
        spec_from_dict(data, source="eval.yaml", model=EvaluationSpec)
    message = str(caught.value)
    assert "\n" not in message
    assert f"task 't': metric '{metric}' does not apply to a {task_type} task; choose one of {valid}" in message


def weakened(model):
    """The successor model with one prediction changed: after w12 it says w40 (not w13)."""
    other = AutoModelForCausalLM.from_config(model.config)
    other.load_state_dict(model.state_dict())
    token, successor, wrong = 4 + 12, 4 + 13, 4 + 40
    with torch.no_grad():
        head = other.lm_head.weight
        head[wrong, token], head[successor, token] = head[successor, token].clone(), 0.0
    return other.eval()


def test_the_tax_follows_the_chosen_metric(chat_model, tmp_path):
    """Exact match is 0 for both models (the answer is longer than what they say), so a tax on exact match sees
    nothing; F1 falls from 6/7 to 4/7, and a task with ``metric: f1`` reports that drop as the tax."""
    model, tokenizer = chat_model
    data = write_jsonl(tmp_path / "qa.jsonl", [{"messages": chat("w9 w10"), "answer": "w11 w12 w13 w14"}])
    template = TEMPLATE.replace("w30 ", "")  # answer right after the question
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model.name_or_path)
    tokenizer.chat_template = template
    taxes = {}
    for metric in (None, "f1"):
        task = {"name": "qa", "type": "generation", "path": str(data), "max_new_tokens": 3}
        spec = EvaluationSpec(tasks=[task if metric is None else {**task, "metric": metric}])
        suite = EvaluationSuite.from_spec(spec)
        sft, candidate = suite.evaluate(model, tokenizer), suite.evaluate(weakened(model), tokenizer)
        assert sft.tasks["qa"]["exact_match"] == candidate.tasks["qa"]["exact_match"] == 0.0
        assert sft.tasks["qa"]["f1"] == pytest.approx(6 / 7) and candidate.tasks["qa"]["f1"] == pytest.approx(4 / 7)
        taxes[metric] = tax(candidate.primary, sft.primary, candidate.directions)
    assert taxes[None] == 0.0
    assert taxes["f1"] == pytest.approx(2 / 7)
