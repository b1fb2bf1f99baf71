"""Built-in benchmark tasks on local JSONL files, needing no extra package (BLEU needs sacrebleu).

- ``multiple_choice``: ``{"context": ..., "choices": [...], "answer": index or choice text}`` (``question`` or
  ``prompt`` may stand for ``context``). Each choice is scored by the log-likelihood of ``" " + choice`` after the
  context (set ``choice_prefix``); ``acc`` takes the most likely choice, ``acc_norm`` divides by the choice's length
  in bytes first (as lm-evaluation-harness does).
- ``generation``: ``{"prompt": ..., "answer": ... or "answers": [...]}``; greedy generation cut at the first stop
  string, scored by ``exact_match`` and token ``f1`` after SQuAD normalisation, best over the answers.
- ``bleu``: ``{"prompt": ..., "reference": ... or "references": [...]}``; greedy generation, corpus BLEU (0-1).
- ``perplexity``: ``{"text": ...}``; ``perplexity`` and the mean negative log-likelihood per token ``nll``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from taxcut.errors import TaxcutError
from taxcut.evaluation.data import read_jsonl
from taxcut.evaluation.generation import GenerationSettings, generate
from taxcut.evaluation.loglik import encode_pair, score_continuations
from taxcut.evaluation.metrics import corpus_bleu, exact_match, stop_at, token_f1


@dataclass
class MultipleChoiceTask:
    name: str
    path: Path
    limit: int | None = None
    batch_size: int = 16
    choice_prefix: str = " "
    primary_metric: str = "acc"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        self.records = read_jsonl(self.path, needs=[("context", "question", "prompt"), ("choices",), ("answer",)],
                                  what="multiple-choice task", limit=self.limit)
        self.answers = [self._answer_index(number, r) for number, r in enumerate(self.records, start=1)]

    def _answer_index(self, number: int, record: dict) -> int:
        choices, answer = record["choices"], record["answer"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise TaxcutError(f"{self.path}, record {number}: 'choices' must be a list of at least two strings")
        if isinstance(answer, int) and 0 <= answer < len(choices):
            return answer
        if isinstance(answer, str) and answer in choices:
            return choices.index(answer)
        raise TaxcutError(f"{self.path}, record {number}: 'answer' must be a choice index or one of the choices")

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        pairs, owners = [], []
        for index, record in enumerate(self.records):
            context = str(next(record[k] for k in ("context", "question", "prompt") if record.get(k) is not None))
            for choice in record["choices"]:
                pairs.append(encode_pair(tokenizer, context, self.choice_prefix + str(choice)))
                owners.append(index)
        scored = score_continuations(model, tokenizer, pairs, self.batch_size, what=f"{self.name} choice")
        correct = correct_norm = 0
        cursor = 0
        for index, record in enumerate(self.records):
            count = len(record["choices"])
            mine = scored[cursor:cursor + count]
            cursor += count
            lengths = [max(1, len((self.choice_prefix + str(c)).encode())) for c in record["choices"]]
            correct += _argmax([s.logprob for s in mine]) == self.answers[index]
            correct_norm += _argmax([s.logprob / n for s, n in zip(mine, lengths)]) == self.answers[index]
        total = len(self.records)
        return {"acc": correct / total, "acc_norm": correct_norm / total}


@dataclass
class GenerationTask:
    name: str
    path: Path
    limit: int | None = None
    max_new_tokens: int = 32
    batch_size: int = 16
    stop: list[str] = field(default_factory=lambda: ["\n"])
    primary_metric: str = "exact_match"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        self.records = read_jsonl(self.path, needs=[("prompt",), ("answer", "answers")], what="generation task",
                                  limit=self.limit)
        _require_some(self.path, self.records, ("answers", "answer"))

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        predictions = _greedy(model, tokenizer, self.records, self.max_new_tokens, self.batch_size, self.stop)
        golds = [_as_list(r.get("answers", r.get("answer"))) for r in self.records]
        total = len(self.records)
        return {
            "exact_match": sum(exact_match(p, g) for p, g in zip(predictions, golds)) / total,
            "f1": sum(token_f1(p, g) for p, g in zip(predictions, golds)) / total,
        }


@dataclass
class BleuTask:
    name: str
    path: Path
    limit: int | None = None
    max_new_tokens: int = 64
    batch_size: int = 16
    stop: list[str] = field(default_factory=lambda: ["\n"])
    primary_metric: str = "bleu"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        self.records = read_jsonl(self.path, needs=[("prompt",), ("reference", "references")], what="BLEU task",
                                  limit=self.limit)
        _require_some(self.path, self.records, ("references", "reference"))

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        predictions = _greedy(model, tokenizer, self.records, self.max_new_tokens, self.batch_size, self.stop)
        references = [_as_list(r.get("references", r.get("reference"))) for r in self.records]
        return {"bleu": corpus_bleu([p.strip() for p in predictions], references)}


@dataclass
class PerplexityTask:
    name: str
    path: Path
    limit: int | None = None
    batch_size: int = 16
    primary_metric: str = "nll"
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        self.records = read_jsonl(self.path, needs=[("text",)], what="perplexity task", limit=self.limit)

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        sequences = [encode_pair(tokenizer, "", str(r["text"])) for r in self.records]
        scored = score_continuations(model, tokenizer, sequences, self.batch_size, what=f"{self.name} text")
        tokens = sum(s.tokens for s in scored)
        nll = -sum(s.logprob for s in scored) / max(tokens, 1)
        return {"nll": nll, "perplexity": math.exp(nll)}


TASK_TYPES = {
    "multiple_choice": MultipleChoiceTask,
    "generation": GenerationTask,
    "bleu": BleuTask,
    "perplexity": PerplexityTask,
}


def _greedy(model, tokenizer, records, max_new_tokens: int, batch_size: int, stops: list[str]) -> list[str]:
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    outputs = generate(model, tokenizer, [str(r["prompt"]) for r in records], settings)
    return [stop_at(text, stops) for text in outputs]


def _require_some(path: Path, records: list[dict], fields: tuple[str, str]) -> None:
    for number, record in enumerate(records, start=1):
        value = record.get(fields[0], record.get(fields[1]))
        if isinstance(value, list) and not value:
            raise TaxcutError(f"{path}, record {number}: '{fields[0]}' is an empty list; give at least one")


def _as_list(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
