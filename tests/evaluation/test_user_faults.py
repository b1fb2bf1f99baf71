"""Faults in the user's evaluation data and reward functions get one line naming the file and line, or the
function; never an internal error, and never a NaN reward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from models import build_reward_model, build_successor_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from taxcut import TaxcutError
from taxcut.cli import main
from taxcut.evaluation.generation import GenerationSettings
from taxcut.evaluation.reward import (
    RewardEvaluator,
    RewardModelScorer,
    checked_rewards,
    function_scorer,
    load_reward_function,
)


@pytest.fixture(scope="module")
def successor(tmp_path_factory):
    folder = build_successor_model(tmp_path_factory.mktemp("successor") / "model")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), PreTrainedTokenizerFast.from_pretrained(folder)


def prompts_file(tmp_path: Path, *lines: str | bytes) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_latin1_prompts_file(tmp_path):
    path = prompts_file(tmp_path, '{"prompt": "w1"}', '{"prompt": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(TaxcutError) as caught:
        RewardEvaluator(path, function_scorer(lambda p, r: 0.0))
    assert one_line(caught) == f"{path}: not UTF-8 text (line 2); save the prompts file as UTF-8"


def test_a_byte_order_mark_is_fine(tmp_path):
    path = prompts_file(tmp_path, '\ufeff{"prompt": "w1"}')
    assert RewardEvaluator(path, function_scorer(lambda p, r: 0.0)).records == [{"prompt": "w1"}]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"messages": "hello"},
            (
                '\'messages\' must be a list of {"role": ..., "content": ...} objects, got text; '
                "give plain text as 'prompt' instead"
            ),
        ),
        ({"messages": []}, '\'messages\' is an empty list; it must be a list of {"role": ..., "content": ...} objects'),
        ({"messages": ["hello"]}, "'messages' item 1 must be an object with 'role' and 'content', got text"),
        (
            {"messages": [{"role": "user", "content": "w1"}, {"role": "user"}]},
            "'messages' item 2: 'content' must be text, got nothing",
        ),
        ({"messages": [{"role": 3, "content": "w1"}]}, "'messages' item 1: 'role' must be text, got a number"),
        ({"prompt": ["w1"]}, "'prompt' must be text, got a list"),
    ],
)
def test_malformed_prompts_name_the_line(tmp_path, record, message):
    path = prompts_file(tmp_path, '{"prompt": "w1"}', json.dumps(record))
    with pytest.raises(TaxcutError) as caught:
        RewardEvaluator(path, function_scorer(lambda p, r: 0.0))
    assert one_line(caught) == f"{path}, line 2: {message}"


def test_a_chat_template_that_refuses_the_messages(tmp_path, successor):
    model, tokenizer = successor
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model.name_or_path)
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    path = prompts_file(tmp_path, json.dumps({"messages": [{"role": "user", "content": "w1"}]}))
    with pytest.raises(TaxcutError) as caught:
        RewardEvaluator(path, function_scorer(lambda p, r: 0.0)).evaluate(model, tokenizer)
    assert one_line(caught) == (
        f"{path}, record 1: the model's chat template cannot render these 'messages' "
        "(Conversation roles must alternate); fix the chat or give 'prompt' text instead"
    )


def reward_module(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "def raises(prompt, response):\n    return {}['missing']\n"
        "def text(prompt, response):\n    return 'great'\n"
        "def number_as_text(prompt, response):\n    return '3.5'\n"
        "def nan(prompt, response):\n    return float('nan')\n"
        "def inf(prompt, response):\n    return -float('inf')\n"
        "def nothing(prompt, response):\n    return None\n"
        "def fine(prompt, response):\n    return len(response)\n"
    )
    return path


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("raises", "raised KeyError: 'missing' (on response 1); fix the function"),
        ("text", "returned 'great' (a str) for response 1; a reward must be a number"),
        ("number_as_text", "returned '3.5' (a str) for response 1; a reward must be a number"),
        ("nan", "returned nan for response 1; a reward must be a finite number"),
        ("inf", "returned -inf for response 1; a reward must be a finite number"),
        ("nothing", "returned None (a NoneType) for response 1; a reward must be a number"),
    ],
)
def test_a_faulty_reward_function_is_named(tmp_path, function, message):
    reference = f"{reward_module(tmp_path)}:{function}"
    score = function_scorer(load_reward_function(reference))
    with pytest.raises(TaxcutError) as caught:
        score(["w1", "w2"], ["w3", "w4"])
    assert one_line(caught) == f"reward function {reference!r} {message}"


def test_a_good_reward_function_still_scores(tmp_path):
    score = function_scorer(load_reward_function(f"{reward_module(tmp_path)}:fine"))
    assert score(["w1", "w2"], ["w3", "w4 w5"]) == [2.0, 5.0]


def test_a_batch_scorer_with_the_wrong_count(tmp_path, successor):
    path = prompts_file(tmp_path, '{"prompt": "w1"}', '{"prompt": "w2"}')

    def short(prompts, responses):
        return [1.0]

    evaluator = RewardEvaluator(path, short, GenerationSettings(max_new_tokens=1))
    with pytest.raises(TaxcutError) as caught:
        evaluator.evaluate(*successor)
    assert one_line(caught) == (
        "reward function 'test_a_batch_scorer_with_the_wrong_count.<locals>.short' returned "
        "1 rewards for 2 responses; it must score each once"
    )
    with pytest.raises(TaxcutError, match="returned float, not a list of 2 rewards"):
        checked_rewards(1.5, 2, "x")


def test_a_reward_model_that_scores_nan(tmp_path):
    folder = build_reward_model(tmp_path / "rm")
    scorer = RewardModelScorer(folder)
    with torch.no_grad():
        scorer.model.score.weight.fill_(math.nan)
    with pytest.raises(TaxcutError) as caught:
        scorer(["w1"], ["w2"])
    assert (
        one_line(caught) == f"the reward model {folder} returned nan for response 1; a reward must be a finite number"
    )


def test_taxcut_eval_reports_user_faults_in_one_line(tmp_path, llama_pair, capsys):
    prompts = prompts_file(tmp_path, '{"prompt": "w1"}')
    spec = tmp_path / "eval.yaml"
    spec.write_text(
        json.dumps(
            {"reward": {"prompts": str(prompts), "function": f"{reward_module(tmp_path)}:nan", "max_new_tokens": 2}}
        )
    )
    assert main(["eval", str(llama_pair[0]), str(spec), "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "returned nan for response 1" in err and "internal error" not in err
    prompts.write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert main(["eval", str(llama_pair[0]), str(spec), "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert err == f"taxcut: error: {prompts}: not UTF-8 text (line 1); save the prompts file as UTF-8\n"
