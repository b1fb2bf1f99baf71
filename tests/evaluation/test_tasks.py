"""Evaluators on a model whose outputs are forced (tests/models.py: the successor model), so scores are exact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import sacrebleu
import torch
from models import VOCAB, build_reward_model, build_successor_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from taxcut import TaxcutError
from taxcut.evaluation.generation import GenerationSettings, generate
from taxcut.evaluation.metrics import exact_match, mean_and_stderr, token_f1
from taxcut.evaluation.reward import RewardEvaluator, RewardModelScorer, function_scorer, load_reward_function
from taxcut.evaluation.tasks import BleuTask, GenerationTask, MultipleChoiceTask, PerplexityTask

TESTS = Path(__file__).parent.parent
SUCCESSOR_LOGPROB = 10.0 - math.log(math.exp(10.0) + VOCAB - 1)  # log p of the forced next token
WRONG_LOGPROB = 0.0 - math.log(math.exp(10.0) + VOCAB - 1)


@pytest.fixture(scope="module")
def successor(tmp_path_factory):
    folder = build_successor_model(tmp_path_factory.mktemp("successor") / "model")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), PreTrainedTokenizerFast.from_pretrained(folder)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


MC_RECORDS = [
    {"context": "w1 w2", "choices": ["w3", "w7"], "answer": "w3"},  # forced right
    {"question": "w5", "choices": ["w9", "w6"], "answer": 0},  # forced wrong: w6 follows w5
    {"prompt": "w20", "choices": ["w30", "w21 w22"], "answer": 1},  # right, by sum and per byte
]


def test_forced_generation(successor):
    model, tokenizer = successor
    outputs = generate(
        model, tokenizer, ["w1 w2", "w10", "w59", "w3"], GenerationSettings(max_new_tokens=3, batch_size=3)
    )
    assert outputs == ["w3 w4 w5", "w11 w12 w13", "w0 w1 w2", "w4 w5 w6"]


def test_multiple_choice_accuracy(successor, tmp_path):
    task = MultipleChoiceTask("mc", write_jsonl(tmp_path / "mc.jsonl", MC_RECORDS), batch_size=2)
    assert task.evaluate(*successor) == {"acc": 2 / 3, "acc_norm": 2 / 3}


def test_generation_exact_match_and_f1(successor, tmp_path):
    records = [
        {"prompt": "w1", "answer": "w2 w3 w4"},  # EM 1
        {"prompt": "w10", "answer": "w11 w12 w99"},  # 2 of 3 tokens: F1 2/3
        {"prompt": "w20", "answers": ["nothing", "The w21 w22, w23!"]},  # EM after normalisation
        {"prompt": "w30", "answer": "w40"},  # 0
    ]
    task = GenerationTask("gen", write_jsonl(tmp_path / "gen.jsonl", records), max_new_tokens=3)
    scores = task.evaluate(*successor)
    assert scores["exact_match"] == 0.5
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4, abs=1e-12)


def test_bleu(successor, tmp_path):
    records = [{"prompt": "w1", "reference": "w2 w3 w4 w5"}, {"prompt": "w10", "references": ["w11 w12 w40 w41"]}]
    task = BleuTask("bleu", write_jsonl(tmp_path / "bleu.jsonl", records), max_new_tokens=4)
    expected = sacrebleu.corpus_bleu(["w2 w3 w4 w5", "w11 w12 w13 w14"], [["w2 w3 w4 w5", "w11 w12 w40 w41"]])
    assert task.evaluate(*successor) == {"bleu": pytest.approx(expected.score / 100, abs=1e-12)}
    perfect = BleuTask("bleu", write_jsonl(tmp_path / "b2.jsonl", records[:1]), max_new_tokens=4)
    assert perfect.evaluate(*successor)["bleu"] == pytest.approx(1.0)


def test_perplexity(successor, tmp_path):
    task = PerplexityTask("ppl", write_jsonl(tmp_path / "ppl.jsonl", [{"text": "w0 w1 w2 w3"}, {"text": "w1 w9"}]))
    scores = task.evaluate(*successor)
    # every token is scored, the first after the BOS token (the model predicts w0 after <s>): 4 right, 2 wrong
    nll = -(4 * SUCCESSOR_LOGPROB + 2 * WRONG_LOGPROB) / 6
    assert scores["nll"] == pytest.approx(nll, abs=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)


def test_reward_from_a_callable(successor, tmp_path):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": "w1"}, {"prompt": "w10"}, {"messages": [{"role": "user", "content": "w20"}]}],
    )
    function = load_reward_function(f"{TESTS / 'rewards.py'}:first_word_number")
    evaluator = RewardEvaluator(prompts, function_scorer(function), GenerationSettings(max_new_tokens=2))
    scores = evaluator.evaluate(*successor)
    mean, stderr = mean_and_stderr([2.0, 11.0, 21.0])  # chat prompt "w20" renders as "w20 " -> "w21 ..."
    assert scores == {"reward": pytest.approx(mean), "reward_stderr": pytest.approx(stderr), "samples": 3.0}


def test_reward_model_scores_match_one_by_one(successor, tmp_path):
    folder = build_reward_model(tmp_path / "rm")
    scorer = RewardModelScorer(folder, batch_size=4)
    prompts, responses = ["w1", "w2 w3 w4 w5", "w6", "w7 w8"], ["w9 w10 w11", "w12", "w13 w14", "w15 w16 w17 w18"]
    batched = scorer(prompts, responses)
    single = [RewardModelScorer(folder, batch_size=1)([p], [r])[0] for p, r in zip(prompts, responses)]
    assert batched == pytest.approx(single, abs=1e-5)  # left/right padding must not change a score
    assert len(set(round(x, 4) for x in batched)) == 4


def test_reward_function_errors(tmp_path):
    with pytest.raises(TaxcutError, match="write it as module:function"):
        load_reward_function("no_colon")
    with pytest.raises(TaxcutError, match="cannot import no_such_module_xyz"):
        load_reward_function("no_such_module_xyz:f")
    with pytest.raises(TaxcutError, match="has no function 'nope'"):
        load_reward_function(f"{TESTS / 'rewards.py'}:nope")


def test_reward_model_that_does_not_load(tmp_path):
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(TaxcutError, match="the reward model does not load as a sequence classifier"):
        RewardModelScorer(tmp_path / "rm")
    with pytest.raises(TaxcutError, match="reward model folder not found"):
        RewardModelScorer(tmp_path / "missing")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "w1"}\n{"promt": "w2"}\n', r"bad.jsonl, line 2: no 'prompt' or 'messages' field"),
        ('{"prompt": "w1"}\n\n{oops\n', r"bad.jsonl, line 3: not valid JSON"),
        ("", "no records; the prompts file is empty"),
        ('["a"]\n', "line 1: expected a JSON object"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(TaxcutError, match=message):
        RewardEvaluator(tmp_path / "bad.jsonl", function_scorer(lambda p, r: 0.0))


def test_more_bad_task_data(tmp_path, successor):
    with pytest.raises(TaxcutError, match="bleu.jsonl, record 1: 'references' is an empty list"):
        BleuTask("b", write_jsonl(tmp_path / "bleu.jsonl", [{"prompt": "w1", "references": []}]))
    with pytest.raises(TaxcutError, match="gen.jsonl, record 1: 'answers' is an empty list"):
        GenerationTask("g", write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "w1", "answers": []}]))
    (tmp_path / "broken.py").write_text("def f(:\n")
    with pytest.raises(TaxcutError, match="broken.py fails to load \\(SyntaxError"):
        load_reward_function(f"{tmp_path / 'broken.py'}:f")
    model, tokenizer = successor
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model.name_or_path)
    tokenizer.chat_template = None
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "w1"}]}])
    with pytest.raises(TaxcutError, match="'messages' but the model's tokenizer has no chat template"):
        RewardEvaluator(prompts, function_scorer(lambda p, r: 0.0)).evaluate(model, tokenizer)


def test_empty_context_is_empty(successor, tmp_path):
    task = MultipleChoiceTask(
        "mc",
        write_jsonl(tmp_path / "mc.jsonl", [{"context": "", "question": "w9", "choices": ["w0", "w5"], "answer": 0}]),
    )
    assert task.evaluate(*successor)["acc"] == 1.0  # "" is the context (BOS then w0), not the question or "None"


def test_task_field_errors(tmp_path):
    with pytest.raises(TaxcutError, match="mc.jsonl, line 1: no 'choices' field"):
        MultipleChoiceTask("mc", write_jsonl(tmp_path / "mc.jsonl", [{"context": "x", "answer": 0}]))
    with pytest.raises(TaxcutError, match="record 1: 'answer' must be a choice index or one of the choices"):
        MultipleChoiceTask(
            "mc", write_jsonl(tmp_path / "mc.jsonl", [{"context": "x", "choices": ["a", "b"], "answer": 5}])
        )
    with pytest.raises(TaxcutError, match="missing.jsonl: generation task file not found"):
        GenerationTask("gen", tmp_path / "missing.jsonl")


def test_lm_eval_local_yaml_task(successor, tmp_path):
    pytest.importorskip("lm_eval", reason="installed by make test (extra [lmeval])")
    from taxcut.evaluation.lmeval import LmEvalTask

    data = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            dict(
                r,
                context=r.get("context") or r.get("question") or r["prompt"],
                answer=r["choices"].index(r["answer"]) if isinstance(r["answer"], str) else r["answer"],
            )
            for r in MC_RECORDS
        ],
    )
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    task = LmEvalTask("tiny", str(tmp_path / "tiny_mc.yaml"))
    scores = task.evaluate(*successor)
    assert scores["acc"] == pytest.approx(2 / 3)  # the same answer as the built-in multiple-choice task
    assert task.primary_metric == "acc" and task.higher_is_better


@pytest.mark.slow
def test_lm_eval_unknown_task_suggests_names():
    pytest.importorskip("lm_eval")
    from taxcut.evaluation.lmeval import LmEvalTask

    with pytest.raises(TaxcutError, match=r"unknown lm-eval task 'hellaswagg'; did you mean hellaswag"):
        LmEvalTask("x", "hellaswagg")


def test_metric_functions():
    assert exact_match("The Cat!", ["cat"]) == 1.0
    assert token_f1("x b c d", ["b c e"]) == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))
    assert token_f1("a b c d", ["b c e"]) == pytest.approx(2 / 3)  # "a" is an article: dropped
    assert mean_and_stderr([1.0]) == (1.0, 0.0)
    assert torch.isclose(torch.tensor(mean_and_stderr([1.0, 3.0])[1]), torch.tensor(1.0))
