"""Built-in benchmark tasks on local JSONL files, needing no extra package (BLEU needs sacrebleu).

- ``multiple_choice``: ``{"context": ..., "choices": [...], "answer": index or choice text}`` (``question`` or
  ``prompt`` may stand for ``context``). Each choice is scored by the log-likelihood of ``" " + choice`` after the
  context (set ``choice_prefix``); ``acc`` takes the most likely choice, ``acc_norm`` divides by the choice's length
  in bytes first (as lm-evaluation-harness does).
- ``generation``: ``{"prompt": ..., "answer": ... or "answers": [...]}``; greedy generation cut at the first stop
  string, scored by ``exact_match``, token ``f1`` and ``contains`` (the answer appears in the output, as whole
  words) after SQuAD normalisation, best over the answers.
- ``bleu``: ``{"prompt": ..., "reference": ... or "references": [...]}``; greedy generation, corpus BLEU (0-1).
- ``perplexity``: ``{"text": ...}``; ``perplexity`` and the mean negative log-likelihood per token ``nll``.

Generation, BLEU and multiple-choice records may give a chat instead of text: ``"messages": [{"role": "user",
"content": ...}, ...]``, rendered with the evaluated model's chat template and its generation prompt, exactly as
reward prompts are (:func:`taxcut.evaluation.generation.render_prompt`); a choice then follows the rendered chat
directly (no ``choice_prefix``), as in lm-evaluation-harness with a chat template. ``primary_metric`` (a task's
``metric:``) is the score the tax follows: one of :data:`taxcut.spec.evaluation.TASK_METRICS` for the task type.

Texts longer than the model's context are refused, never cut, naming the file, the record (and choice) and the
token counts: a generation prompt whose tokens plus ``max_new_tokens`` are over the context, a multiple-choice
context plus choice, a perplexity text (a cut text would be scored as something else, silently). The check uses
the encoding the evaluation makes anyway, before the model runs.

Each task's ``measure`` gives its metrics as statistics over any subset of its records, with their standard errors
(:mod:`taxcut.evaluation.stats`); ``evaluate`` is their values on all of them. ``measure_items`` also gives the
primary metric's score of each record, keyed by the record's index (:class:`taxcut.evaluation.paired.ItemScores`),
for paired comparisons: a right answer's 1 or 0, a generation's score; for BLEU each record's sentence BLEU (corpus
BLEU does not split into items); for ``nll`` each text's NLL over the mean token count of all texts (their mean is
the task's ``nll``); none for ``perplexity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from taxcut.errors import TaxcutError
from taxcut.evaluation.data import prompt_problem, read_jsonl
from taxcut.evaluation.generation import GenerationSettings, generate, render_prompt
from taxcut.evaluation.loglik import encode_pair, score_continuations
from taxcut.evaluation.metrics import contains_answer, exact_match, stop_at, token_f1
from taxcut.evaluation.paired import ItemScores
from taxcut.evaluation.stats import Mean, Ratio, Statistic, bleu_statistics, sentence_bleu_scores
from taxcut.spec.evaluation import metric_problem

_CONTEXT_FIELDS = ("context", "question", "prompt")


class MeasuredTask:
    """What every task shares: :meth:`measure` and :meth:`evaluate` from the task's ``measure_items`` (the
    statistics of its metrics over some records, and the primary metric's score of each)."""

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        """Every metric's value over all the records."""
        return _values(self.measure(model, tokenizer))

    def measure(self, model, tokenizer, items: Sequence[int] | None = None) -> dict[str, Statistic]:
        """Every metric's statistic over the records ``items`` (default: all)."""
        return self.measure_items(model, tokenizer, items)[0]


@dataclass
class MultipleChoiceTask(MeasuredTask):
    name: str
    path: Path
    limit: int | None = None
    batch_size: int = 16
    choice_prefix: str = " "
    primary_metric: str = "acc"
    higher_is_better: bool = True
    kind = "multiple_choice"

    def __post_init__(self) -> None:
        _check_metric(self)
        self.records = read_jsonl(
            self.path,
            needs=[_CONTEXT_FIELDS + ("messages",), ("choices",), ("answer",)],
            what="multiple-choice task",
            limit=self.limit,
            check=_chat_problem(_CONTEXT_FIELDS),
        )
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

    def measure_items(
        self, model, tokenizer, items: Sequence[int] | None = None
    ) -> tuple[dict[str, Statistic], ItemScores]:
        """``acc`` and ``acc_norm`` over the records ``items`` (default: all), as shares of right answers, and the
        primary metric's score (right: 1, wrong: 0) of each record."""
        numbers, records = _chosen(self.records, items)
        answers = [self.answers[n - 1] for n in numbers]
        contexts, chats = _render(self.path, records, tokenizer, _CONTEXT_FIELDS, numbers)
        prefixes = ["" if chat else self.choice_prefix for chat in chats]  # a chat's answer follows its template
        pairs = [
            encode_pair(tokenizer, context, prefix + str(choice), chat_rendered=chat)
            for context, chat, prefix, record in zip(contexts, chats, prefixes, records)
            for choice in record["choices"]
        ]
        labels = [
            f"{self.path}, record {number}, choice {k}"
            for number, record in zip(numbers, records)
            for k in range(1, len(record["choices"]) + 1)
        ]
        scored = score_continuations(model, tokenizer, pairs, self.batch_size, what="context and choice", labels=labels)
        correct, correct_norm = [], []
        cursor = 0
        for index, (record, prefix) in enumerate(zip(records, prefixes)):
            count = len(record["choices"])
            mine = scored[cursor : cursor + count]
            cursor += count
            lengths = [max(1, len((prefix + str(c)).encode())) for c in record["choices"]]
            correct.append(float(_argmax([s.logprob for s in mine]) == answers[index]))
            correct_norm.append(float(_argmax([s.logprob / n for s, n in zip(mine, lengths)]) == answers[index]))
        stats = {"acc": Mean.of(correct, binary=True), "acc_norm": Mean.of(correct_norm, binary=True)}
        return stats, _primary_items(self, numbers, {"acc": correct, "acc_norm": correct_norm})


@dataclass
class GreedyTask(MeasuredTask):
    """The shape of a task scored on greedy generations: records with a prompt (or chat messages) and gold texts
    (``gold``: its one-text and list fields), a generation per record up to a ``stop`` string; a subclass says how
    to score the generations (:meth:`score`)."""

    name: str
    path: Path
    limit: int | None = None
    max_new_tokens: int = 32
    batch_size: int = 16
    stop: list[str] = field(default_factory=lambda: ["\n"])
    primary_metric: str = "exact_match"
    higher_is_better: bool = True
    kind: ClassVar[str]
    gold: ClassVar[tuple[str, str]]  # e.g. ("answer", "answers")
    what: ClassVar[str]  # how errors name the file's kind

    def __post_init__(self) -> None:
        _check_metric(self)
        one, many = self.gold
        self.records = read_jsonl(
            self.path,
            needs=[("prompt", "messages"), (one, many)],
            what=self.what,
            limit=self.limit,
            check=_chat_problem(("prompt",)),
        )
        _require_some(self.path, self.records, (many, one))

    def measure_items(
        self, model, tokenizer, items: Sequence[int] | None = None
    ) -> tuple[dict[str, Statistic], ItemScores]:
        """:meth:`measure`, and the primary metric's score of each record."""
        numbers, records = _chosen(self.records, items)
        predictions = _greedy(
            model, tokenizer, self.path, records, self.max_new_tokens, self.batch_size, self.stop, numbers
        )
        one, many = self.gold
        stats, scores = self.score(predictions, [_as_list(r.get(many, r.get(one))) for r in records])
        return stats, _primary_items(self, numbers, scores)

    def score(
        self, predictions: list[str], golds: list[list[str]]
    ) -> tuple[dict[str, Statistic], dict[str, list[float]]]:
        """The statistics of the generations, and each record's score by metric."""
        raise NotImplementedError


@dataclass
class GenerationTask(GreedyTask):
    """``exact_match``, ``f1`` and ``contains`` of each generation against the record's answers."""

    kind = "generation"
    gold = ("answer", "answers")
    what = "generation task"

    def score(
        self, predictions: list[str], golds: list[list[str]]
    ) -> tuple[dict[str, Statistic], dict[str, list[float]]]:
        pairs = list(zip(predictions, golds))
        scores = {
            "exact_match": [exact_match(p, g) for p, g in pairs],
            "f1": [token_f1(p, g) for p, g in pairs],
            "contains": [contains_answer(p, g) for p, g in pairs],
        }
        return {metric: Mean.of(values, binary=metric != "f1") for metric, values in scores.items()}, scores


@dataclass
class BleuTask(GreedyTask):
    """Corpus ``bleu`` against the records' references, from each record's n-gram statistics; the item scores are
    each record's sentence BLEU (:func:`~taxcut.evaluation.stats.sentence_bleu_scores`: corpus BLEU does not split
    into item scores; the corpus score stays the statistic's)."""

    max_new_tokens: int = 64
    primary_metric: str = "bleu"
    kind = "bleu"
    gold = ("reference", "references")
    what = "BLEU task"

    def score(
        self, predictions: list[str], golds: list[list[str]]
    ) -> tuple[dict[str, Statistic], dict[str, list[float]]]:
        bleu = bleu_statistics([p.strip() for p in predictions], golds)
        return {"bleu": bleu}, {"bleu": sentence_bleu_scores(bleu)}


@dataclass
class PerplexityTask(MeasuredTask):
    name: str
    path: Path
    limit: int | None = None
    batch_size: int = 16
    primary_metric: str = "nll"
    higher_is_better: bool = False
    kind = "perplexity"

    def __post_init__(self) -> None:
        _check_metric(self)
        self.records = read_jsonl(self.path, needs=[("text",)], what="perplexity task", limit=self.limit)

    def measure_items(
        self, model, tokenizer, items: Sequence[int] | None = None
    ) -> tuple[dict[str, Statistic], ItemScores | None]:
        """``nll`` per token and ``perplexity`` over the records ``items`` (default: all), and for ``nll`` each text's
        NLL (summed over its tokens) over the mean token count of all the task's texts: the same in any subset, their
        mean over all texts is the task's ``nll``, and the paired error of their differences is the delta-method
        error of a difference of ``nll`` (both models score the same tokens). ``perplexity`` keeps no per-item scores
        (it is no mean of item scores)."""
        numbers, records = _chosen(self.records, items)
        sequences = [encode_pair(tokenizer, "", str(r["text"])) for r in records]
        scored = score_continuations(
            model,
            tokenizer,
            sequences,
            self.batch_size,
            what="a text",
            labels=[f"{self.path}, record {number}" for number in numbers],
        )
        pairs = [(-s.logprob, float(s.tokens)) for s in scored]  # (an item's NLL, its tokens)
        stats = {"nll": Ratio.of(pairs), "perplexity": Ratio.of(pairs, exp=True)}
        if self.primary_metric != "nll":
            return stats, None
        scale = self._mean_tokens(tokenizer)
        return stats, _primary_items(self, numbers, {"nll": [nll / scale for nll, _ in pairs]})

    def _mean_tokens(self, tokenizer) -> float:
        """The mean number of scored tokens over all the task's texts (tokenizing only; no model runs)."""
        counts = [len(ids) - start for ids, start in (encode_pair(tokenizer, "", str(r["text"])) for r in self.records)]
        return max(sum(counts) / len(counts), 1.0) if counts else 1.0


def _chosen(records: list[dict], items: Sequence[int] | None) -> tuple[list[int], list[dict]]:
    """The records ``items`` (indices; default: all) and their numbers (1-based)."""
    indices = range(len(records)) if items is None else items
    return [i + 1 for i in indices], [records[i] for i in indices]


def _primary_items(task, numbers: Sequence[int], scores: dict[str, list[float]]) -> ItemScores:
    """The primary metric's score of each record, keyed by its index (its number - 1)."""
    return ItemScores.of([number - 1 for number in numbers], scores[task.primary_metric])


def _values(stats: dict[str, Statistic]) -> dict[str, float]:
    return {metric: stat.value for metric, stat in stats.items()}


TASK_TYPES = {
    "multiple_choice": MultipleChoiceTask,
    "generation": GenerationTask,
    "bleu": BleuTask,
    "perplexity": PerplexityTask,
}


def _greedy(
    model,
    tokenizer,
    path: Path,
    records,
    max_new_tokens: int,
    batch_size: int,
    stops: list[str],
    numbers: Sequence[int] | None = None,
) -> list[str]:
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    prompts, chats = _render(path, records, tokenizer, ("prompt",), numbers)
    labels = [f"{path}, record {number}" for number in numbers or range(1, len(records) + 1)]
    outputs = generate(model, tokenizer, prompts, settings, chat_rendered=chats, labels=labels)
    return [stop_at(text, stops) for text in outputs]


def _render(
    path: Path, records: list[dict], tokenizer, fields: tuple[str, ...], numbers: Sequence[int] | None = None
) -> tuple[list[str], list[bool]]:
    """Each record's prompt text (the first of ``fields`` it has) or its ``messages`` rendered through the chat
    template (as reward prompts are), and whether it was a chat (its text then carries its special tokens).
    ``numbers``: the records' line numbers in the file, for errors (default: 1, 2, ...)."""
    texts, chats = [], []
    for number, record in zip(numbers or range(1, len(records) + 1), records):
        text = next((record[k] for k in fields if record.get(k) is not None), None)
        chats.append(text is None)
        if text is not None:
            texts.append(str(text))
            continue
        try:
            texts.append(render_prompt({"messages": record["messages"]}, tokenizer))
        except TaxcutError as exc:
            raise TaxcutError(f"{path}, record {number}: {exc}") from None
    return texts, chats


def _chat_problem(fields: tuple[str, ...]):
    """A record check: what is wrong with its ``messages`` when it has none of the text ``fields``."""

    def check(record: dict) -> str | None:
        if any(record.get(k) is not None for k in fields):
            return None
        return prompt_problem({"messages": record.get("messages")})

    return check


def _check_metric(task) -> None:
    problem = metric_problem(task.kind, task.primary_metric)
    if problem is not None:
        raise TaxcutError(f"task '{task.name}': {problem}")


def _require_some(path: Path, records: list[dict], fields: tuple[str, str]) -> None:
    for number, record in enumerate(records, start=1):
        value = record.get(fields[0], record.get(fields[1]))
        if isinstance(value, list) and not value:
            raise TaxcutError(f"{path}, record {number}: '{fields[0]}' is an empty list; give at least one")


def _as_list(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
