"""The retention term of a tax-aware fit: ``W * KL(SFT || merged)`` of next-token distributions on a retain set.

The likelihood of high-reward samples has no term for the tax and pulls the ratios toward the aligned model; this
term pulls them back wherever the merged model's predictions on ordinary text drift from the SFT model's. The
retain set is JSONL, one ``text`` (or ``prompt`` and an optional ``response``) per line, no labels: the KL is taken
teacher-forced at every position that predicts a next token of the record.

The SFT model's log-probabilities are computed once, before the fit touches a weight, and cached on the CPU
(``tokens x vocabulary x 4`` bytes; measured on the lab in the fit's report): recomputing them on the fly would
need the SFT values of every tensor the fit sets in place (the head, the norms), i.e. more device memory or a
copy per step, and one more forward per step. The retain batches run through the same parametrised, recomputed
model as the fit set, so the fit's memory is unchanged apart from that cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from taxcut.errors import TaxcutError
from taxcut.evaluation.data import read_jsonl
from taxcut.training import collate

ANSWER_FIELDS = ("response", "answer", "completion", "target", "output")


def read_retain_set(path: Path) -> list[dict]:
    """The retain set's records, each with text: ``text``, or ``prompt`` (+ ``response``), all strings."""
    return read_jsonl(path, needs=[("text", "prompt")], what="retain set", check=_retain_problem)


def _retain_problem(record: dict) -> str | None:
    for key in ("text", "prompt", "response"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            return f"'{key}' must be text, got {type(value).__name__}"
    return None


def encode_retain_set(
    tokenizer, records: list[dict], path: Path, context: int | None
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each record (``text`` as is; ``prompt`` + ``response`` + end of sequence, as the fit set is
    encoded) cut to the model's ``context``, and the numbers of the records cut. A record of fewer than two tokens
    predicts nothing and is refused."""
    encoded, cut = [], []
    for number, record in enumerate(records, start=1):
        special = not record.get("chat", False)
        if record.get("text") is not None:
            ids = tokenizer(record["text"], add_special_tokens=special)["input_ids"]
        else:
            ids = tokenizer(record["prompt"], add_special_tokens=special)["input_ids"]
            if record.get("response") is not None:
                ids += tokenizer(record["response"], add_special_tokens=False)["input_ids"]
                ids += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        if len(ids) < 2:
            raise TaxcutError(
                f"{path}, record {number}: {len(ids)} token(s), nothing to compare the models on; give "
                "a longer text or drop it"
            )
        if context is not None and len(ids) > context:
            ids = ids[:context]
            cut.append(number)
        encoded.append(ids)
    return encoded, cut


@dataclass
class RetainBatch:
    """One batch of the retain set and the SFT model's log-probabilities at its predicting positions (CPU)."""

    inputs: dict[str, torch.Tensor]
    positions: torch.Tensor  # (B, T - 1) bool: which positions predict a next token of their record
    sft_log_probs: torch.Tensor  # (positions, vocabulary) float32


def retain_batches(model, encoded: list[list[int]], batch_size: int, pad_id: int, device) -> list[RetainBatch]:
    """The retain set in batches of ``batch_size`` (file order), each with the SFT log-probabilities of ``model``
    -- called before the fit changes a weight, so ``model`` is the SFT model."""
    batches = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = collate([(ids, 0) for ids in encoded[start : start + batch_size]], pad_id)
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            positions = batch["labels"][:, 1:] != -100
            logits = model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).logits
            batches.append(RetainBatch(inputs, positions, _log_probs(logits, positions).cpu()))
    return batches


def retention_kl(logits: torch.Tensor, batch: RetainBatch) -> torch.Tensor:
    """KL(SFT || merged), summed over the vocabulary, averaged over the batch's predicting positions: 0 exactly
    when the merged model predicts what the SFT model does."""
    sft = batch.sft_log_probs.to(logits.device)
    merged = _log_probs(logits, batch.positions)
    return (sft.exp() * (sft - merged)).sum(-1).mean()


def _log_probs(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)[positions.to(logits.device)]


def cache_bytes(batches: list[RetainBatch]) -> int:
    return sum(b.sft_log_probs.numel() * b.sft_log_probs.element_size() for b in batches)


def refuse_shared_lines(retain: Path, evaluation: list[tuple[str, Path]]) -> None:
    """Refuse a retain set that shares a text with an evaluation file (the reward prompts, a task's items): a fit
    that keeps the SFT model's predictions on evaluation items would flatter the tax it then measures. Compared,
    whitespace-trimmed: each retain record's text, prompt and prompt + response against every text field of every
    evaluation record (and its prompt + answer)."""
    mine: dict[str, int] = {}
    for number, record in enumerate(read_retain_set(retain), start=1):
        for text in _texts({key: record.get(key) for key in ("text", "prompt", "response")}):
            mine.setdefault(text, number)
    for role, path in evaluation:
        for number, record in enumerate(read_jsonl(path, needs=[], what=role), start=1):
            for text in _texts(record):
                if text in mine:
                    shown = text if len(text) <= 60 else text[:57] + "..."
                    raise TaxcutError(
                        f"retain set {retain} (record {mine[text]}) shares a line with the {role} "
                        f"{path} (record {number}): {shown!r}; a retain set must be disjoint from "
                        "every evaluation item: drop those records from the retain set"
                    )


def _texts(record: dict) -> set[str]:
    """The trimmed, non-empty texts of a JSONL record: its text fields, chat contents and prompt + answer."""
    found = [value for value in record.values() if isinstance(value, str)]
    found += [m.get("content") for m in record.get("messages") or [] if isinstance(m, dict)]
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        found += [prompt + record[key] for key in ANSWER_FIELDS if isinstance(record.get(key), str)]
    return {text.strip() for text in found if isinstance(text, str) and text.strip()}
