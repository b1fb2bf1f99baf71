"""Per-item random streams: a sampled response depends on the model and its (seed, item, sample) alone, and the
Gumbel-max sampler draws from the softmax of the processed logits."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import pytest
import torch
from rewards import first_word_number
from transformers import AutoModelForCausalLM, AutoTokenizer

from taxcut.evaluation import item_sampling
from taxcut.evaluation.generation import GenerationSettings, generate
from taxcut.evaluation.item_sampling import item_sampling_processors, row_states, uniforms
from taxcut.evaluation.reward import RewardEvaluator, function_scorer
from taxcut.evaluation.suite import EvaluationSuite
from taxcut.spec.evaluation import EvaluationSpec

TESTS = Path(__file__).parent.parent
MASK = 2**64 - 1


def _reference_mix(z: int) -> int:
    """splitmix64's finalizer on unsigned Python integers: what the int64 torch version must equal bit for bit."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _reference_uniform(seed: int, item: int, sample: int, step: int, token: int) -> float:
    golden = 0x9E3779B97F4A7C15
    state = _reference_mix((seed + golden) & MASK)
    for part in (item, sample, step, token):
        state = _reference_mix(state ^ _reference_mix((part + golden) & MASK))
    return ((state >> 41) * 2 + 1) / 2**24


@pytest.fixture(scope="module")
def policy(llama_pair):
    return AutoModelForCausalLM.from_pretrained(llama_pair[1]).eval(), AutoTokenizer.from_pretrained(llama_pair[1])


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    """Prompts of several lengths, plain and chat (encoded apart), so batches pad and split differently."""
    records = [{"prompt": " ".join(f"w{(7 * i + k) % 60 + 4}" for k in range(1 + i % 5))} for i in range(10)]
    records += [{"messages": [{"role": "user", "content": f"w{i + 10} w{i + 20}"}]} for i in range(3)]
    path = tmp_path_factory.mktemp("item-sampling") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _evaluator(path: Path, *, batch_size: int = 16, seed: int = 3, samples: int = 2) -> RewardEvaluator:
    settings = GenerationSettings(
        max_new_tokens=6, do_sample=True, temperature=0.9, top_p=0.95, seed=seed, batch_size=batch_size
    )
    return RewardEvaluator(path, function_scorer(first_word_number), settings, samples_per_prompt=samples)


def test_uniforms_equal_a_pure_python_splitmix_and_repeat():
    seed, keys = 2**63 + 5, [(0, 0), (7, 1), (2**40, 3), (-1, 0)]  # beyond int64 and negative: taken modulo 2**64
    states = row_states(seed, keys, "cpu")
    first, again = uniforms(states, 4, 50), uniforms(row_states(seed, keys, "cpu"), 4, 50)
    assert torch.equal(first, again)
    expected = [
        [_reference_uniform(seed % 2**64, item % 2**64, sample, 4, token) for token in range(50)]
        for item, sample in keys
    ]
    assert first.tolist() == expected


def test_uniforms_are_inside_zero_one_and_uniform():
    states = row_states(11, [(item, 0) for item in range(200)], "cpu")
    u = torch.cat([uniforms(states, step, 1000).flatten() for step in range(5)])  # 1,000,000 draws
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.002  # its standard error is 0.0003
    assert abs(float(u.var()) - 1 / 12) < 0.001
    histogram = torch.histc(u.float(), bins=10, min=0, max=1)
    assert float((histogram - 1e5).abs().max()) < 2000  # each tenth within ~6 standard errors of 100,000


def _kept_probabilities(logits: list[float], temperature: float, top_p: float) -> list[float]:
    """softmax(logits / temperature) cut to the most likely tokens whose mass reaches top_p, renormalised."""
    weights = [math.exp(x / temperature) for x in logits]
    probs = [w / sum(weights) for w in weights]
    kept, mass = set(), 0.0
    for token in sorted(range(len(probs)), key=lambda t: -probs[t]):
        if mass >= top_p:
            break
        kept.add(token)
        mass += probs[token]
    total = sum(probs[t] for t in kept)
    return [probs[t] / total if t in kept else 0.0 for t in range(len(probs))]


def test_gumbel_max_draws_the_softmax_after_temperature_and_top_p():
    logits = [2.0, 1.5, 1.0, 0.3, 0.0, -0.5, -1.0, -3.0]
    expected = _kept_probabilities(logits, temperature=1.3, top_p=0.93)
    assert expected[-1] == 0.0 and expected[-2] == 0.0 and expected[-3] > 0  # top-p cuts the two least likely
    draws = 40000
    processors = item_sampling_processors(1.3, 0.93, 5, [(item, 0) for item in range(draws)], 3, "cpu")
    input_ids = torch.zeros(draws, 5, dtype=torch.long)  # step 2 of a prompt of 3 tokens
    scores = processors(input_ids, torch.tensor([logits] * draws))
    counts = torch.bincount(scores.argmax(dim=-1), minlength=len(logits)).tolist()
    assert counts[-1] == 0 and counts[-2] == 0
    chi2 = sum((c - draws * p) ** 2 / (draws * p) for c, p in zip(counts, expected) if p > 0)
    assert chi2 < 25  # 5 degrees of freedom: p < 0.0002 beyond 25


def test_sampled_rewards_do_not_depend_on_batch_size_or_order(policy, prompts_file):
    model, tokenizer = policy
    prompts, responses = _evaluator(prompts_file, batch_size=16).responses(model, tokenizer)
    for batch_size in (1, 3):
        assert _evaluator(prompts_file, batch_size=batch_size).responses(model, tokenizer) == (prompts, responses)
    shuffled = list(range(13))
    random.Random(0).shuffle(shuffled)
    _, answered = _evaluator(prompts_file, batch_size=3).responses(model, tokenizer, shuffled)
    assert answered == [responses[2 * i + j] for i in shuffled for j in range(2)]  # the keys travel with the items
    _, subset = _evaluator(prompts_file, batch_size=1).responses(model, tokenizer, [11, 4])  # a halving stage
    assert subset == responses[22:24] + responses[8:10]
    full = _evaluator(prompts_file, batch_size=16).measure(model, tokenizer)
    assert _evaluator(prompts_file, batch_size=1).measure(model, tokenizer) == full
    assert len({r for r in responses}) > 20  # really sampled: 26 responses, nearly all different


def test_seeds_and_samples_have_their_own_streams(policy, prompts_file):
    model, tokenizer = policy
    _, responses = _evaluator(prompts_file, seed=3).responses(model, tokenizer)
    _, other_seed = _evaluator(prompts_file, seed=4).responses(model, tokenizer)
    assert sum(a != b for a, b in zip(responses, other_seed)) >= 24  # of 26
    assert sum(responses[2 * i] != responses[2 * i + 1] for i in range(13)) >= 12  # samples 0 and 1 of an item


def test_greedy_decoding_ignores_seeds_and_keys(policy):
    model, tokenizer = policy
    prompts = ["w5 w6", "w7", "w8 w9 w10"]
    greedy = [
        generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=4, seed=seed), keys=keys)
        for seed, keys in ((0, None), (9, [(4, 1), (5, 2), (6, 3)]))
    ]
    assert greedy[0] == greedy[1]
    encoded = tokenizer(["w7"], return_tensors="pt", add_special_tokens=False)
    direct = model.generate(**encoded, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert greedy[0][1] == tokenizer.decode(direct[0, 1:], skip_special_tokens=True)


def test_sampled_evaluations_record_the_sampling_scheme(prompts_file, monkeypatch):
    reward = {"prompts": str(prompts_file), "function": f"{TESTS / 'rewards.py'}:first_word_number"}
    sampled = EvaluationSuite.from_spec(EvaluationSpec(reward={**reward, "do_sample": True}))
    greedy = EvaluationSuite.from_spec(EvaluationSpec(reward=reward))
    before = sampled.fingerprint(), greedy.fingerprint()
    monkeypatch.setattr("taxcut.evaluation.suite.SAMPLING_SCHEME", item_sampling.SAMPLING_SCHEME + 1)
    assert sampled.fingerprint() != before[0]  # old sampled results are not mixed with new
    assert greedy.fingerprint() == before[1]  # greedy results stay valid


def test_the_fit_set_does_not_depend_on_the_shard_size(llama_pair, tmp_path):
    from taxcut.hma.sample import sample_fit_set

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 11)))
    before = hashlib.sha256(prompts.read_bytes()).hexdigest()
    options = {
        "n": 2,
        "keep": 10,
        "reward_function": f"{TESTS / 'rewards.py'}:first_word_number",
        "device": "cpu",
        "settings": GenerationSettings(do_sample=True, max_new_tokens=3, seed=5),
    }
    sample_fit_set(llama_pair[1], prompts, tmp_path / "a.jsonl", shard_size=2, **options)
    sample_fit_set(llama_pair[1], prompts, tmp_path / "b.jsonl", shard_size=5, **options)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 10
    assert hashlib.sha256(prompts.read_bytes()).hexdigest() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_the_same_noise_and_responses_as_the_cpu(policy, prompts_file):
    states = [row_states(7, [(item, item % 3) for item in range(64)], device) for device in ("cpu", "cuda")]
    assert torch.equal(uniforms(states[0], 2, 5000), uniforms(states[1], 2, 5000).cpu())  # integer hashing
    model, tokenizer = policy
    on_cpu = _evaluator(prompts_file).responses(model, tokenizer)
    on_cuda = _evaluator(prompts_file).responses(model.to("cuda"), tokenizer)
    model.to("cpu")
    assert on_cuda == on_cpu  # the tiny model's logits differ by rounding only, far from any tie
