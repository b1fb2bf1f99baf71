"""Batched, KV-cached generation with left padding, and chat-aware prompt rendering."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from taxcut.errors import TaxcutError, first_line
from taxcut.evaluation.cost import count_generated, count_scored
from taxcut.evaluation.item_sampling import item_sampling_processors


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
        raise TaxcutError(
            "a prompt is given as 'messages' but the model's tokenizer has no chat template; give 'prompt' text instead"
        )
    try:
        return tokenizer.apply_chat_template(record["messages"], tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template raises what it likes (roles must alternate, ...)
        raise TaxcutError(
            f"the model's chat template cannot render these 'messages' ({first_line(exc)}); "
            "fix the chat or give 'prompt' text instead"
        ) from None


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


PROMPT_ADVICE = "shorten or drop it, or lower max_new_tokens"


def model_context(model, tokenizer=None) -> int | None:
    """The most tokens the model reads at once: its config's ``max_position_embeddings`` (``n_positions`` in
    GPT-2), else the tokenizer's ``model_max_length`` when it is a real bound (transformers puts 1e30 there when it
    knows none); None when neither says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**8 else None


def over_context(
    lengths: Sequence[int], room: int, context: int | None, labels: Sequence[str] | None, what: str, advice: str
) -> None:
    """Refuse items whose ``length + room`` tokens are over ``context``: one line naming the first of them (its
    label, default ``item N``), its count, and how many are over."""
    if context is None:
        return
    over = [i for i, length in enumerate(lengths) if length + room > context]
    if not over:
        return
    first = over[0]
    label = labels[first] if labels is not None else f"item {first + 1}"
    extra = f" + {room} new tokens" if room else ""
    raise TaxcutError(
        f"{label}: {what} of {lengths[first]} tokens{extra} is over the model's context of {context} "
        f"tokens ({len(over)} of {len(lengths)} are over it); {advice}"
    )


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings: GenerationSettings,
    *,
    chat_rendered: Sequence[bool] | None = None,
    labels: Sequence[str] | None = None,
    keys: Sequence[tuple[int, int]] | None = None,
) -> list[str]:
    """The continuation of each prompt (special tokens dropped), in the order of ``prompts``.

    Prompts are sorted by length so that each batch pads little, left-padded so that every row ends at the same
    position, and generated with the KV cache. Sampling draws each prompt's tokens from its own random stream,
    keyed by ``(seed, item, sample)`` from ``keys`` (default: the prompt's position, sample 0) alone
    (:mod:`taxcut.evaluation.item_sampling`), so a response does not depend on its batch, padding or device, and
    every candidate of a sweep sees the same noise for the same item. Prompts rendered through a chat template
    (``chat_rendered``) already
    carry their special tokens. The prompts' tokens count as scored, the responses' (padding aside) as generated
    (:mod:`taxcut.evaluation.cost`).

    All prompts are encoded before anything is generated, and a prompt whose tokens plus ``max_new_tokens`` are
    over the model's context (:func:`model_context`) is refused, named by its ``labels`` entry (e.g. file and
    record): cutting it would change what is asked, and a model past its positions fails or degrades silently.
    """
    pad_id = ensure_pad_token(tokenizer)
    rendered = list(chat_rendered) if chat_rendered is not None else [False] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    with padding_side(tokenizer, "left"):
        batches = _encoded_batches(tokenizer, prompts, rendered, order, settings.batch_size)
    lengths = [0] * len(prompts)
    for rows, encoded in batches:
        for row, length in zip(rows, encoded["attention_mask"].sum(dim=1).tolist()):
            lengths[row] = length
    over_context(lengths, settings.max_new_tokens, model_context(model, tokenizer), labels, "a prompt", PROMPT_ADVICE)
    keys = list(keys) if keys is not None else [(i, 0) for i in range(len(prompts))]
    with torch.no_grad():
        for rows, encoded in batches:
            encoded = encoded.to(device)
            produced = model.generate(
                **encoded,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                **_sampling(settings, [keys[row] for row in rows], encoded["input_ids"].shape[1], device),
            )
            new_tokens = produced[:, encoded["input_ids"].shape[1] :]
            count_scored(int(encoded["attention_mask"].sum()))
            count_generated(int((new_tokens != pad_id).sum()))
            for row, text in zip(rows, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[row] = text
    return outputs


def _sampling(settings: GenerationSettings, keys: list[tuple[int, int]], prompt_length: int, device) -> dict:
    """``generate``'s extra arguments: none for greedy decoding; for sampling, the rows' per-item Gumbel-max
    processors, which turn ``generate``'s greedy argmax into a draw from each row's own stream."""
    if not settings.do_sample:
        return {}
    return {
        "logits_processor": item_sampling_processors(
            settings.temperature, settings.top_p, settings.seed, keys, prompt_length, device
        )
    }


def _encoded_batches(tokenizer, prompts: Sequence[str], rendered: list[bool], order: list[int], batch_size: int):
    """``(rows, encoding)`` per batch of ``order``: rows with and without their own special tokens apart."""
    batches = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for special in (False, True):
            rows = [i for i in batch if rendered[i] != special]
            if rows:
                batches.append(
                    (
                        rows,
                        tokenizer(
                            [prompts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=special
                        ),
                    )
                )
    return batches
