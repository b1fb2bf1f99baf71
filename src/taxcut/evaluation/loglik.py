"""Batched log-likelihood scoring of continuations (multiple choice, perplexity)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taxcut.evaluation.cost import count_scored
from taxcut.evaluation.generation import model_context, over_context


@dataclass(frozen=True)
class Scored:
    logprob: float  # sum of the log-probabilities of the scored tokens
    tokens: int  # how many tokens were scored
    greedy: bool  # whether every scored token was the model's top choice


def encode_pair(tokenizer, context: str, continuation: str, *, chat_rendered: bool = False) -> tuple[list[int], int]:
    """Token ids of ``context + continuation`` and the index of the first continuation token.

    As in lm-evaluation-harness: the whole string is encoded and the context's own encoding length marks the
    split, so that tokens merging across the boundary belong to the continuation. A context rendered through a chat
    template (``chat_rendered``) already carries its special tokens: none are added.
    """
    special = not chat_rendered
    whole = tokenizer(context + continuation, add_special_tokens=special)["input_ids"]
    start = len(tokenizer(context, add_special_tokens=special)["input_ids"]) if context else 0
    if start == 0:  # nothing to condition the first token on: prefix BOS (or EOS), as lm-evaluation-harness does
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            return whole, min(1, len(whole))
        if not whole or whole[0] != prefix:
            whole = [prefix] + whole
        start = 1
    return whole, min(start, len(whole))


def score_continuations(
    model,
    tokenizer,
    sequences: Sequence[tuple[list[int], int]],
    batch_size: int = 16,
    what: str = "a text",
    labels: Sequence[str] | None = None,
) -> list[Scored]:
    """Score ``ids[start:]`` of each ``(ids, start)`` given what precedes it; batched with right padding.

    A sequence longer than the model's context is refused before any forward pass, named by its ``labels`` entry
    (default ``what N``): cutting the context or the continuation would change its score without a trace.
    """
    over_context(
        [len(ids) for ids, _ in sequences],
        0,
        model_context(model, tokenizer),
        labels,
        what,
        "shorten or drop it (a cut text would be scored differently)",
    )
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    results: list[Scored | None] = [None] * len(sequences)
    with torch.no_grad():
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            width = max(len(sequences[i][0]) for i in batch) - 1
            inputs = torch.zeros((len(batch), max(width, 1)), dtype=torch.long)
            mask = torch.zeros_like(inputs)
            for row, i in enumerate(batch):
                ids = sequences[i][0][:-1]
                inputs[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[row, : len(ids)] = 1
            count_scored(int(mask.sum()))
            logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1).cpu()  # (B, T, V)
            for row, i in enumerate(batch):
                ids, start = sequences[i]
                targets = torch.tensor(ids[start:], dtype=torch.long)
                positions = torch.arange(start - 1, len(ids) - 1)
                picked = logprobs[row, positions, targets]
                greedy = bool((logprobs[row, positions].argmax(dim=-1) == targets).all()) if len(targets) else True
                results[i] = Scored(float(picked.sum()), len(targets), greedy)
    return results  # type: ignore[return-value]
