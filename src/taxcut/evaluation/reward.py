"""The reward axis: generate responses to held-out prompts and score them with a reward model or a function."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taxcut.errors import TaxcutError, first_line
from taxcut.evaluation.data import read_jsonl
from taxcut.evaluation.generation import GenerationSettings, generate, prompt_text, render_prompt
from taxcut.evaluation.metrics import mean_and_stderr


def load_reward_function(reference: str) -> Callable[[str, str], float]:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` -> the callable ``(prompt, response) -> float``."""
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
    except Exception as exc:  # noqa: BLE001 - the module itself fails (a syntax error, an exception at import)
        raise TaxcutError(f"reward function {reference!r}: {module_name} fails to load "
                          f"({type(exc).__name__}: {first_line(exc)})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TaxcutError(f"reward function {reference!r}: {module_name} has no function {function_name!r}")
    return function


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

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        texts = [self._render(p, r) for p, r in zip(prompts, responses)]
        templated = bool(getattr(self.tokenizer, "chat_template", None))  # the template writes special tokens
        scores: list[float] = []
        limit = getattr(self.model.config, "max_position_embeddings", None)
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=limit is not None, max_length=limit,
                                       add_special_tokens=not templated).to(self.device)
                scores.extend(self.model(**batch).logits[:, 0].float().tolist())
        return scores

    def _render(self, prompt: str, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt + response


@dataclass
class RewardEvaluator:
    """Mean reward (and its standard error) of the model's responses to the prompts of a JSONL file.

    Each line holds ``prompt`` (text) or ``messages`` (a chat, rendered with the policy's chat template).
    ``samples_per_prompt`` > 1 with sampling averages out generation noise.
    """

    prompts_path: Path
    scorer: Callable[[Sequence[str], Sequence[str]], list[float]]
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    samples_per_prompt: int = 1
    limit: int | None = None
    name: str = "reward"

    def __post_init__(self) -> None:
        self.records = read_jsonl(self.prompts_path, needs=[("prompt", "messages")], what="prompts", limit=self.limit)

    def responses(self, model, tokenizer) -> tuple[list[str], list[str]]:
        """(plain prompts, responses), each prompt repeated ``samples_per_prompt`` times."""
        records = [r for r in self.records for _ in range(self.samples_per_prompt)]
        rendered = [render_prompt(r, tokenizer) for r in records]
        chat = [r.get("prompt") is None for r in records]
        return [prompt_text(r) for r in records], generate(model, tokenizer, rendered, self.settings, chat_rendered=chat)

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        prompts, responses = self.responses(model, tokenizer)
        rewards = [float(x) for x in self.scorer(prompts, responses)]
        mean, stderr = mean_and_stderr(rewards)
        return {"reward": mean, "reward_stderr": stderr, "samples": float(len(rewards))}


def function_scorer(function: Callable[[str, str], float]) -> Callable[[Sequence[str], Sequence[str]], list[float]]:
    """Lift a per-pair reward function to the batch interface of the scorers."""

    def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [float(function(p, r)) for p, r in zip(prompts, responses)]

    return score
