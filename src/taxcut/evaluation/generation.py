"""Batched, KV-cached generation with left padding, and chat-aware prompt rendering."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from taxcut.errors import TaxcutError, first_line
from taxcut.evaluation.cost import count_generated, count_scored


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16


def render_prompt(record: dict, tokenizer) -> str:
    """A record's prompt as text: ``prompt`` as is, or ``messages`` through the tokenizer's chat template."""
    if record.get("prompt") is not None:
        return str(record["prompt"])
    if not getattr(tokenizer, "chat_template", None):
        raise TaxcutError("a prompt is given as 'messages' but the model's tokenizer has no chat template; "
                          "give 'prompt' text instead")
    try:
        return tokenizer.apply_chat_template(record["messages"], tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - a template raises what it likes (roles must alternate, ...)
        raise TaxcutError(f"the model's chat template cannot render these 'messages' ({first_line(exc)}); "
                          "fix the chat or give 'prompt' text instead") from None


def prompt_text(record: dict) -> str:
    """The plain prompt handed to a reward function: ``prompt``, or the last user message."""
    if record.get("prompt") is not None:
        return str(record["prompt"])
    users = [m.get("content", "") for m in record["messages"] if m.get("role") == "user"]
    return users[-1] if users else ""


@contextmanager
def padding_side(tokenizer, side: str):
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


def ensure_pad_token(tokenizer) -> int:
    """The pad id, borrowing the end-of-sequence token when the tokenizer has no pad token."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


def generate(model, tokenizer, prompts: Sequence[str], settings: GenerationSettings,
             *, chat_rendered: Sequence[bool] | None = None) -> list[str]:
    """The continuation of each prompt (special tokens dropped), in the order of ``prompts``.

    Prompts are sorted by length so that each batch pads little, left-padded so that every row ends at the same
    position, and generated with the KV cache. Sampling is seeded once per call, so that every candidate of a
    sweep sees the same random stream. Prompts rendered through a chat template (``chat_rendered``) already
    carry their special tokens. The prompts' tokens count as scored, the responses' (padding aside) as generated
    (:mod:`taxcut.evaluation.cost`).
    """
    pad_id = ensure_pad_token(tokenizer)
    rendered = list(chat_rendered) if chat_rendered is not None else [False] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    generator_seed = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
    with torch.no_grad(), padding_side(tokenizer, "left"), generator_seed:
        torch.manual_seed(settings.seed)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            for special in (False, True):  # rows with and without their own special tokens are encoded apart
                rows = [i for i in batch if rendered[i] != special]
                if not rows:
                    continue
                encoded = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True,
                                    add_special_tokens=special).to(device)
                sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {}
                produced = model.generate(
                    **encoded, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                    pad_token_id=pad_id, **sampling,
                )
                new_tokens = produced[:, encoded["input_ids"].shape[1]:]
                count_scored(int(encoded["attention_mask"].sum()))
                count_generated(int((new_tokens != pad_id).sum()))
                for row, text in zip(rows, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    outputs[row] = text
    return outputs
