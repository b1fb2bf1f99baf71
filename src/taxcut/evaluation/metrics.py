"""Pure scoring functions: answer normalisation, exact match, token F1 (SQuAD/DROP style), containment, BLEU, mean
and error."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, fold white space (the SQuAD evaluation script)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(answer) for answer in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """The best token-overlap F1 of ``prediction`` against any of ``answers``, after normalisation."""
    return max(_f1(normalize_answer(prediction).split(), normalize_answer(answer).split()) for answer in answers)


def contains_answer(prediction: str, answers: Sequence[str]) -> float:
    """1 if any answer appears in the prediction as whole words, both normalised (so "Paris" is found in "It is
    Paris." but "4" is not found in "14"), else 0. An answer that normalises to nothing matches only an empty
    prediction."""
    predicted = f" {normalize_answer(prediction)} "
    for answer in answers:
        gold = normalize_answer(answer)
        if (f" {gold} " in predicted) if gold else not predicted.strip():
            return 1.0
    return 0.0


def _f1(predicted: list[str], gold: list[str]) -> float:
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU from sacrebleu, on a 0-1 scale (sacrebleu reports 0-100)."""
    import sacrebleu

    width = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    return sacrebleu.corpus_bleu(list(predictions), streams).score / 100.0


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n); 0 for a single value)."""
    count = len(values)
    mean = sum(values) / count
    if count < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (count - 1)
    return mean, math.sqrt(variance / count)


def stop_at(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of ``stops``."""
    cut = len(text)
    for stop in stops:
        found = text.find(stop)
        if found != -1:
            cut = min(cut, found)
    return text[:cut]
