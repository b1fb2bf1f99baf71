"""Bounded work on the user's texts: a JSONL line over the size bound is refused before any tokenisation (or model
loading); prompts, task items and reward pairs longer than the model's context are refused by file and record
before the model runs; fit examples are cut to the context and counted in a note. The user's files never change."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from models import build_reward_model, build_successor_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import taxcut.evaluation.data as data
import taxcut.hma.fit as fit
import taxcut.hma.sample as sample
from taxcut import TaxcutError
from taxcut.evaluation.generation import GenerationSettings, model_context
from taxcut.evaluation.reward import RewardEvaluator, RewardModelScorer, function_scorer
from taxcut.evaluation.tasks import GenerationTask, MultipleChoiceTask, PerplexityTask
from taxcut.hma.fit import fit_ratios
from taxcut.hma.sample import sample_fit_set
from taxcut.spec.fit import FitSettings

CONTEXT = 128  # the successor model's max_position_embeddings
REWARDS = Path(__file__).parent.parent / "rewards.py"


@pytest.fixture(scope="module")
def successor_folder(tmp_path_factory):
    return build_successor_model(tmp_path_factory.mktemp("successor") / "model")


@pytest.fixture(scope="module")
def successor(successor_folder):
    return (
        AutoModelForCausalLM.from_pretrained(successor_folder).eval(),
        PreTrainedTokenizerFast.from_pretrained(successor_folder),
    )


def words(count: int, first: int = 5) -> str:
    return " ".join(f"w{first + i % 50}" for i in range(count))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def no_model_runs(model, monkeypatch):
    """Make every forward pass and generation of ``model`` fail: a refusal must come before them."""

    def fail(*args, **kwargs):
        raise AssertionError("the model ran before the refusal")

    monkeypatch.setattr(model, "generate", fail, raising=False)
    monkeypatch.setattr(model, "forward", fail)


def huge_line_file(path: Path, field: str = "prompt") -> Path:
    """A first good line, then one line a little over the bound."""
    with open(path, "w") as handle:
        handle.write(json.dumps({field: "w1", "answer": "w2", "response": "w2"}) + "\n")
        handle.write(json.dumps({field: "w1 " * (data.MAX_LINE_BYTES // 3 + 10), "answer": "w2"}) + "\n")
    return path


# --- the line bound: before any tokenisation -----------------------------------------------------------------


def test_the_context_is_the_config_s_and_else_a_sane_tokenizer_bound(successor):
    model, tokenizer = successor
    assert model_context(model, tokenizer) == CONTEXT

    class Bare:
        config = None

    tokenizer_bound = type("T", (), {"model_max_length": 512})()
    placeholder = type("T", (), {"model_max_length": int(1e30)})()
    assert model_context(Bare(), tokenizer_bound) == 512
    assert model_context(Bare(), placeholder) is None


@pytest.mark.parametrize("task", [GenerationTask, PerplexityTask])
def test_a_huge_task_line_is_refused_when_read(tmp_path, task):
    path = huge_line_file(tmp_path / "task.jsonl", field="text" if task is PerplexityTask else "prompt")
    before = digest(path)
    with pytest.raises(TaxcutError, match=rf"^{path}, line 2: over {data.MAX_LINE_BYTES} bytes; .*split or shorten"):
        task("t", path)  # no model or tokenizer exists yet: the refusal comes at reading
    assert digest(path) == before


def test_a_huge_line_is_read_with_a_bounded_readline(tmp_path, monkeypatch):
    """The reader never asks for more than the bound (+1) at once, so a 10 GB line is not held in memory."""
    monkeypatch.setattr(data, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "w1"}) + "\n" + json.dumps({"prompt": "w1 " * 100_000}) + "\n")
    reads = []
    real_open = open

    class Spy:
        def __init__(self, handle):
            self.handle = handle

        def readline(self, size=-1):
            line = self.handle.readline(size)
            reads.append((size, len(line)))
            return line

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def __iter__(self):
            raise AssertionError("an unbounded line iteration")

    monkeypatch.setattr(data, "open", lambda *a, **k: Spy(real_open(*a, **k)), raising=False)
    with pytest.raises(TaxcutError, match=rf"^{path}, line 2: over 1000 bytes"):
        RewardEvaluator(path, function_scorer(lambda p, r: 0.0))
    assert reads and all(0 < size <= 1001 and length <= 1001 for size, length in reads)
    monkeypatch.setattr(data, "open", real_open, raising=False)
    short = write_jsonl(tmp_path / "short.jsonl", [{"prompt": "w1 " * 300}])  # 900-odd bytes: within the bound
    assert len(RewardEvaluator(short, function_scorer(lambda p, r: 0.0)).records) == 1


def test_sample_refuses_a_huge_prompt_line_before_loading_or_tokenising(successor_folder, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the refusal")

    monkeypatch.setattr(sample, "load_causal_lm", fail)
    monkeypatch.setattr(sample, "load_tokenizer", fail)
    prompts = huge_line_file(tmp_path / "prompts.jsonl")
    before = digest(prompts)
    out = tmp_path / "fit.jsonl"
    with pytest.raises(TaxcutError, match=rf"^{prompts}, line 2: over {data.MAX_LINE_BYTES} bytes"):
        sample_fit_set(
            successor_folder, prompts, out, n=1, keep=1, reward_function=f"{REWARDS}:first_word_number", device="cpu"
        )
    assert digest(prompts) == before and not out.exists()


def test_fit_refuses_a_huge_line_before_loading_the_models(llama_pair, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(fit, "load_causal_lm", fail)
    monkeypatch.setattr(fit, "load_tokenizer", fail)
    path = huge_line_file(tmp_path / "fit.jsonl")
    before = digest(path)
    with pytest.raises(TaxcutError, match=rf"^{path}, line 2: over {data.MAX_LINE_BYTES} bytes"):
        fit_ratios(*llama_pair, path, FitSettings(alpha=0.5), log=lambda *_: None)
    assert digest(path) == before


# --- the model's context: evaluation refuses ------------------------------------------------------------------


def test_a_generation_prompt_over_the_context_is_refused_by_record(successor, tmp_path, monkeypatch):
    model, tokenizer = successor
    long = words(CONTEXT - 16 + 1)  # one token too many with 16 new tokens
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"prompt": "w1", "answer": "w2"},
            {"prompt": long, "answer": "w9"},
            {"prompt": words(CONTEXT - 16), "answer": "w9"},
        ],
    )
    before = digest(path)
    task = GenerationTask("qa", path, max_new_tokens=16, batch_size=2)
    count = tokens(tokenizer, long)
    assert count == CONTEXT - 15
    with monkeypatch.context() as patch:
        no_model_runs(model, patch)
        with pytest.raises(TaxcutError) as caught:
            task.evaluate(model, tokenizer)
    assert str(caught.value) == (
        f"{path}, record 2: a prompt of {count} tokens + 16 new tokens is over the model's "
        f"context of {CONTEXT} tokens (1 of 3 are over it); shorten or drop it, or lower "
        "max_new_tokens"
    )
    assert digest(path) == before
    # exactly at the context, and the other records: they run
    assert task.measure(model, tokenizer, items=[0, 2])["contains"].value == 0.5  # "w2 w3 ..." holds w2


def test_a_reward_prompt_over_the_context_is_refused_for_each_sample(successor, tmp_path, monkeypatch):
    model, tokenizer = successor
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": words(CONTEXT)}, {"prompt": "w1"}])
    evaluator = RewardEvaluator(
        path, function_scorer(lambda p, r: 0.0), GenerationSettings(max_new_tokens=4), samples_per_prompt=3
    )
    no_model_runs(model, monkeypatch)
    with pytest.raises(
        TaxcutError,
        match=rf"^{path}, record 1: a prompt of {CONTEXT} tokens \+ 4 new tokens is over "
        rf"the model's context of {CONTEXT} tokens \(3 of 6 are over it\)",
    ):
        evaluator.evaluate(model, tokenizer)


def test_multiple_choice_and_perplexity_items_over_the_context_are_refused(successor, tmp_path, monkeypatch):
    model, tokenizer = successor
    mc = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"context": "w1", "choices": ["w2", "w3"], "answer": 0},
            {"context": words(CONTEXT - 1), "choices": ["w2", "w3 w4"], "answer": 0},
        ],
    )
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "w1 w2"}, {"text": words(CONTEXT + 5)}])
    before = digest(mc), digest(text)
    no_model_runs(model, monkeypatch)
    # record 2's first choice is exactly the context (fits); its second is one token over
    with pytest.raises(
        TaxcutError,
        match=rf"^{mc}, record 2, choice 2: context and choice of {CONTEXT + 1} tokens is "
        rf"over the model's context of {CONTEXT} tokens \(1 of 4 are over it\); "
        r"shorten or drop it \(a cut text would be scored differently\)$",
    ):
        MultipleChoiceTask("mc", mc).evaluate(model, tokenizer)
    with pytest.raises(
        TaxcutError,
        match=rf"^{text}, record 2: a text of {CONTEXT + 6} tokens is over the model's "
        rf"context of {CONTEXT} tokens \(1 of 2 are over it\)",
    ):
        PerplexityTask("ppl", text).evaluate(model, tokenizer)  # +1: the BOS a perplexity text is scored after
    assert (digest(mc), digest(text)) == before


def test_a_reward_model_refuses_pairs_over_its_context(tmp_path, monkeypatch):
    folder = build_reward_model(tmp_path / "rm")
    scorer = RewardModelScorer(folder, device="cpu")
    context = model_context(scorer.model, scorer.tokenizer)
    assert context == 64
    no_model_runs(scorer.model, monkeypatch)
    prompt, response = words(60), words(10, first=20)
    rendered = scorer._render(prompt, response)
    count = len(scorer.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    with pytest.raises(
        TaxcutError,
        match=rf"^the reward model {folder}, response 2: prompt and response of {count} "
        rf"tokens is over the model's context of 64 tokens \(1 of 2 are over it\); "
        "use a reward model with a longer context",
    ):
        scorer(["w1", prompt], ["w2", response])


def test_sample_refuses_a_long_prompt_of_a_later_shard_before_any_sampling(successor_folder, tmp_path, monkeypatch):
    import taxcut.evaluation.reward as reward

    def fail(*args, **kwargs):
        raise AssertionError("a shard was sampled before the refusal")

    monkeypatch.setattr(reward, "generate", fail)
    records = [{"prompt": f"w{i + 4}"} for i in range(9)] + [{"messages": [{"role": "user", "content": words(125)}]}]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", records)
    before = digest(prompts)
    out = tmp_path / "fit.jsonl"
    with pytest.raises(
        TaxcutError,
        match=rf"^{prompts}, record 10: a prompt of 125 tokens \+ 4 new tokens is over "
        rf"the model's context of {CONTEXT} tokens \(1 of 10 are over it\)",
    ):
        sample_fit_set(
            successor_folder,
            prompts,
            out,
            n=2,
            keep=4,
            reward_function=f"{REWARDS}:first_word_number",
            settings=GenerationSettings(do_sample=True, max_new_tokens=4),
            device="cpu",
            shard_size=2,
        )
    assert digest(prompts) == before and not out.exists()


# --- fit examples: cut to the context and counted ---------------------------------------------------------------


def test_fit_cuts_long_examples_to_the_context_and_notes_how_many(llama_pair, tmp_path):
    sft, aligned = llama_pair
    tokenizer = PreTrainedTokenizerFast.from_pretrained(aligned)
    records = [
        {"prompt": "w1 w2", "response": "w3 w4"},
        {"prompt": words(40), "response": words(40, first=10)},  # 81 tokens with the end of sequence
        {"prompt": "w5", "response": "w6"},
        {"prompt": words(63), "response": words(3)},
    ]  # one response token fits
    path = write_jsonl(tmp_path / "fit.jsonl", records)
    before = digest(path)
    notes = []
    result = fit_ratios(sft, aligned, path, FitSettings(alpha=0.5, batch_size=4), log=notes.append)
    note = (
        f"2 of 4 fit examples are longer than the model's context of 64 tokens: their responses were cut to "
        f"fit (records 2, 4 of {path})"
    )
    assert note in result.adjustments and f"fit: {note}" in notes
    assert all(math.isfinite(loss) for loss in result.losses)
    examples, cut = fit.encode_fit_set(tokenizer, records, path, 64, "response")
    assert cut == [2, 4] and [len(ids) for ids, _ in examples] == [5, 64, 3, 64]
    assert [start for _, start in examples] == [2, 40, 1, 63]
    assert examples[1][0] == tokenizer(records[1]["prompt"] + " " + records[1]["response"])["input_ids"][:64]
    assert digest(path) == before


def test_fit_refuses_an_example_whose_prompt_fills_the_context(llama_pair, tmp_path):
    path = write_jsonl(
        tmp_path / "fit.jsonl", [{"prompt": "w1", "response": "w2"}, {"prompt": words(64), "response": "w2"}]
    )
    with pytest.raises(
        TaxcutError,
        match=rf"^{path}, record 2: prompt and response are 66 tokens, longer than the "
        r"model's context of 64, and the prompt alone \(64 tokens\) leaves no room",
    ):
        fit_ratios(*llama_pair, path, FitSettings(alpha=0.5), log=lambda *_: None)
