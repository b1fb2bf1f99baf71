"""The lab's two training stages, as plain loops: supervised fine-tuning, and RAFT.

RAFT (reward-ranked fine-tuning; Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model
Alignment", the main RLHF algorithm of the alignment-tax paper): sample k responses per prompt from the current
model, keep the best under the reward, fine-tune on those only, repeat.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from taxcut.evaluation.generation import GenerationSettings, generate
from taxcut.lab.tasks import Example
from taxcut.training import collate, warmup_cosine


def encode(tokenizer, examples: Sequence[Example]) -> list[tuple[list[int], int]]:
    """Token ids of prompt + answer + end-of-sequence, and where the answer starts (the loss covers it only)."""
    encoded = []
    for example in examples:
        prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append((prompt + answer, len(prompt)))
    return encoded


def length_grouped_batches(encoded, batch_size: int, rng: random.Random):
    """Endless batches, each drawn from the shorter or the longer half of the data (less padding per batch)."""
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    halves = [by_length[: len(by_length) // 2] or by_length, by_length[len(by_length) // 2 :]]
    while True:
        half = rng.choice(halves)
        yield [encoded[i] for i in rng.sample(half, min(batch_size, len(half)))]


def fine_tune(
    model,
    tokenizer,
    examples: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    warmup: float = 0.05,
    on_step: Callable[[float], None] | None = None,
) -> list[float]:
    """AdamW with linear warm-up and cosine decay; loss on answer tokens only. Returns the loss of every step;
    ``on_step`` gets each step's loss as it is done (progress)."""
    rng = random.Random(seed)
    encoded = encode(tokenizer, examples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = warmup_cosine(optimizer, steps, warmup)
    batches = length_grouped_batches(encoded, batch_size, rng)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**collate(next(batches), tokenizer.pad_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(losses[-1])
    model.eval()
    return losses


def raft(
    model,
    tokenizer,
    prompts: Sequence[str],
    reward: Callable[[str, str], float],
    *,
    iterations: int,
    samples: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_new_tokens: int = 40,
    after_iteration: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """RAFT: per iteration, sample ``samples`` responses per prompt, keep each prompt's best, fine-tune on them."""
    history = []
    for iteration in range(iterations):
        settings = GenerationSettings(
            max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, seed=seed * 1000 + iteration, batch_size=256
        )
        repeated = [p for p in prompts for _ in range(samples)]
        keys = [(index, j) for index in range(len(prompts)) for j in range(samples)]  # prompt i's sample j
        responses = generate(model, tokenizer, repeated, settings, keys=keys)
        scores = [reward(p, r) for p, r in zip(repeated, responses)]
        best = []
        for index, prompt in enumerate(prompts):
            group = range(index * samples, (index + 1) * samples)
            winner = max(group, key=lambda i: scores[i])
            best.append(Example(prompt, responses[winner].strip()))
        steps = max(1, epochs * len(best) // batch_size)
        losses = fine_tune(
            model, tokenizer, best, steps=steps, batch_size=batch_size, lr=lr, seed=seed * 1000 + iteration
        )
        stats = {
            "iteration": iteration + 1,
            "sample_reward": sum(scores) / len(scores),
            "kept_reward": sum(reward(e.prompt, e.answer) for e in best) / len(best),
            "final_loss": losses[-1],
        }
        history.append(stats)
        if after_iteration is not None:
            after_iteration(iteration + 1, stats)
    return history
