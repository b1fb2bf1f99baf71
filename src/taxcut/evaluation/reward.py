"""The reward axis: generate responses to held-out prompts and score them with a reward model or a function."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taxcut.errors import TaxcutError, first_line
from taxcut.evaluation.cost import count_scored
from taxcut.evaluation.data import prompt_problem, read_jsonl
from taxcut.evaluation.generation import (
    PROMPT_ADVICE,
    GenerationSettings,
    generate,
    model_context,
    over_context,
    prompt_text,
    render_prompt,
)
from taxcut.evaluation.paired import ItemScores
from taxcut.evaluation.stats import Mean


class RewardFunction:
    """A user's reward callable ``(prompt, response) -> float`` with the reference it was loaded from (its name in
    error messages)."""

    def __init__(self, reference: str, function: Callable[[str, str], float]):
        self.reference, self.function = reference, function

    def __call__(self, prompt: str, response: str) -> float:
        return self.function(prompt, response)

    def __repr__(self) -> str:
        return f"reward function {self.reference!r}"


def load_reward_function(reference: str) -> RewardFunction:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` -> the callable
    ``(prompt, response) -> float``."""
    module_name, sep, function_name = reference.rpartition(":")
    if not sep or not module_name or not function_name:
        raise TaxcutError(f"reward function {reference!r}: write it as module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise TaxcutError(f"reward function {reference!r}: {path} not found")
            spec = importlib.util.spec_from_file_location(f"taxcut_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaxcutError(f"reward function {reference!r}: cannot import {module_name} ({exc})") from None
    except TaxcutError:
        raise
    except Exception as exc:  # the module itself fails (a syntax error, an exception at import)
        raise TaxcutError(
            f"reward function {reference!r}: {module_name} fails to load ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TaxcutError(f"reward function {reference!r}: {module_name} has no function {function_name!r}")
    return RewardFunction(reference, function)


class RewardModelScorer:
    """Scores (prompt, response) pairs with a local ``AutoModelForSequenceClassification`` folder, batched.

    The pair is rendered with the reward model's own chat template when it has one (user prompt, assistant
    response), otherwise as ``prompt + response``. The score is the single logit of the reward head.
    """

    def __init__(self, folder: Path, batch_size: int = 16, device: str | torch.device = "cpu"):
        from taxcut.evaluation.loading import load_reward_model

        folder = Path(folder)
        self.model, self.tokenizer = load_reward_model(folder, device=device)
        if self.model.config.num_labels != 1:
            raise TaxcutError(
                f"{folder}: a reward model has one output (num_labels=1); this one has {self.model.config.num_labels}"
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.device = device
        self.folder = folder

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The reward of each pair. A pair longer than the reward model's context is refused (naming the response
        and the counts) before the reward model runs: cutting it would drop the end the reward is read from."""
        texts = [self._render(p, r) for p, r in zip(prompts, responses)]
        templated = bool(getattr(self.tokenizer, "chat_template", None))  # the template writes special tokens
        batches = [
            self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=not templated,
            )
            for start in range(0, len(texts), self.batch_size)
        ]
        lengths = [length for batch in batches for length in batch["attention_mask"].sum(dim=1).tolist()]
        over_context(
            lengths,
            0,
            model_context(self.model, self.tokenizer),
            [f"the reward model {self.folder}, response {n}" for n in range(1, len(texts) + 1)],
            "prompt and response",
            "use a reward model with a longer context, shorter prompts or a lower max_new_tokens",
        )
        scores: list[float] = []
        with torch.no_grad():
            for batch in batches:
                batch = batch.to(self.device)
                count_scored(int(batch["attention_mask"].sum()))
                scores.extend(self.model(**batch).logits[:, 0].float().tolist())
        return checked_rewards(scores, len(texts), f"the reward model {self.folder}")

    def _render(self, prompt: str, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + response


@dataclass
class RewardEvaluator:
    """Mean reward (and its standard error) of the model's responses to the prompts of a JSONL file.

    Each line holds ``prompt`` (text) or ``messages`` (a chat, rendered with the policy's chat template).
    ``samples_per_prompt`` > 1 with sampling averages out generation noise. A prompt whose tokens plus
    ``max_new_tokens`` are over the policy's context is refused, naming the file and record, before anything is
    generated (:func:`taxcut.evaluation.generation.generate`): a prompt cut to fit would be another prompt.
    """

    prompts_path: Path
    scorer: Callable[[Sequence[str], Sequence[str]], list[float]]
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    samples_per_prompt: int = 1
    limit: int | None = None
    name: str = "reward"

    def __post_init__(self) -> None:
        self.records = read_jsonl(
            self.prompts_path, needs=[("prompt", "messages")], what="prompts", limit=self.limit, check=prompt_problem
        )

    def responses(self, model, tokenizer, items: Sequence[int] | None = None) -> tuple[list[str], list[str]]:
        """(plain prompts, responses), each prompt repeated ``samples_per_prompt`` times; ``items``: the indices of
        the prompts to answer (default: all of them). Sample ``j`` of prompt ``i`` (its index in the file, not in
        ``items``) draws from the random stream ``(seed, i, j)``, so it is the same in any subset, order or batch."""
        indices = list(range(len(self.records)) if items is None else items)
        chosen = [(i + 1, self.records[i]) for i in indices]
        keys = [(i, j) for i in indices for j in range(self.samples_per_prompt)]
        records = [r for _, r in chosen for _ in range(self.samples_per_prompt)]
        once = [self._render(number, r, tokenizer) for number, r in chosen]
        rendered = [text for text in once for _ in range(self.samples_per_prompt)]
        chat = [r.get("prompt") is None for r in records]
        labels = [f"{self.prompts_path}, record {n}" for n, _ in chosen for _ in range(self.samples_per_prompt)]
        responses = generate(model, tokenizer, rendered, self.settings, chat_rendered=chat, labels=labels, keys=keys)
        return [prompt_text(r) for r in records], responses

    def check_context(self, model, tokenizer) -> None:
        """Refuse every prompt that :meth:`responses` would refuse, at once: for a long sampling run that answers
        its prompts a shard at a time, so that the last shard's long prompt does not fail it at the end."""
        numbers = range(1, len(self.records) + 1)
        lengths = [
            len(tokenizer(self._render(n, r, tokenizer), add_special_tokens=r.get("prompt") is not None)["input_ids"])
            for n, r in zip(numbers, self.records)
        ]
        over_context(
            lengths,
            self.settings.max_new_tokens,
            model_context(model, tokenizer),
            [f"{self.prompts_path}, record {n}" for n in numbers],
            "a prompt",
            PROMPT_ADVICE,
        )

    def _render(self, number: int, record: dict, tokenizer) -> str:
        try:
            return render_prompt(record, tokenizer)
        except TaxcutError as exc:
            raise TaxcutError(f"{self.prompts_path}, record {number}: {exc}") from None

    def measure(self, model, tokenizer, items: Sequence[int] | None = None) -> Mean:
        """The rewards of the responses to the prompts ``items`` (default: all), over prompts x samples."""
        return self.measure_items(model, tokenizer, items)[0]

    def measure_items(self, model, tokenizer, items: Sequence[int] | None = None) -> tuple[Mean, ItemScores]:
        """:meth:`measure`, and each response's reward: sample ``j`` of prompt ``i`` (its index in the file) keyed
        ``i * samples_per_prompt + j``, the same in any subset (:mod:`taxcut.evaluation.paired`)."""
        prompts, responses = self.responses(model, tokenizer, items)
        rewards = checked_rewards(self.scorer(prompts, responses), len(responses), _scorer_name(self.scorer))
        indices = range(len(self.records)) if items is None else items
        keys = [i * self.samples_per_prompt + j for i in indices for j in range(self.samples_per_prompt)]
        return Mean.of(rewards), ItemScores.of(keys, rewards)

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        rewards = self.measure(model, tokenizer)
        return {"reward": rewards.value, "reward_stderr": rewards.stderr, "samples": float(rewards.count)}


def function_scorer(function: Callable[[str, str], float]) -> Callable[[Sequence[str], Sequence[str]], list[float]]:
    """Lift a per-pair reward function to the batch interface of the scorers; whatever the function raises or
    returns that is not a finite number becomes a one-line error naming it."""
    name = _scorer_name(function)

    def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        scores = []
        for number, (prompt, response) in enumerate(zip(prompts, responses), start=1):
            try:
                scores.append(function(prompt, response))
            except Exception as exc:  # the user's code: any failure is reported as theirs
                raise TaxcutError(
                    f"{name} raised {type(exc).__name__}: {first_line(exc)} (on response {number}); fix the function"
                ) from None
        return checked_rewards(scores, len(responses), name)

    score.reward_name = name
    return score


def checked_rewards(values, count: int, name: str) -> list[float]:
    """``values`` as a list of ``count`` finite floats, or a one-line error naming the scorer ``name``."""
    try:
        values = list(values)
    except TypeError:
        raise TaxcutError(f"{name} returned {type(values).__name__}, not a list of {count} rewards") from None
    if len(values) != count:
        raise TaxcutError(f"{name} returned {len(values)} rewards for {count} responses; it must score each once")
    rewards = []
    for number, value in enumerate(values, start=1):
        try:
            if isinstance(value, (str, bytes)):
                raise TypeError
            reward = float(value)
        except (TypeError, ValueError):
            raise TaxcutError(
                f"{name} returned {_shown(value)} (a {type(value).__name__}) for response {number}; "
                "a reward must be a number"
            ) from None
        if not math.isfinite(reward):
            raise TaxcutError(f"{name} returned {reward} for response {number}; a reward must be a finite number")
        rewards.append(reward)
    return rewards


def _scorer_name(scorer) -> str:
    """How error messages name a scorer: the reward model's folder, or the reward function's reference."""
    if isinstance(scorer, RewardModelScorer):
        return f"the reward model {scorer.folder}"
    if isinstance(scorer, RewardFunction):
        return repr(scorer)
    return getattr(scorer, "reward_name", None) or f"reward function {getattr(scorer, '__qualname__', '?')!r}"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
