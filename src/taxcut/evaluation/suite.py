"""An evaluation spec made into evaluators: the reward axis and the tax tasks, run together on one model."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from taxcut.errors import TaxcutError
from taxcut.evaluation.cost import metered
from taxcut.evaluation.generation import GenerationSettings
from taxcut.evaluation.item_sampling import SAMPLING_SCHEME
from taxcut.evaluation.measurement import Measurement
from taxcut.evaluation.paired import ItemScores, PerItem
from taxcut.evaluation.protocol import TaxTask
from taxcut.evaluation.result import EvaluationResult
from taxcut.evaluation.reward import RewardEvaluator, RewardModelScorer, function_scorer, load_reward_function
from taxcut.evaluation.stats import Reported, Statistic
from taxcut.evaluation.subset import FULL, DataPart
from taxcut.evaluation.tasks import TASK_TYPES
from taxcut.io.provenance import weights_identity
from taxcut.spec.evaluation import EvaluationSpec, RewardSpec, TaskSpec

MEASUREMENT_VERSION = 1  # raise it when a default setting or a measure changes what a recorded result means


@dataclass
class EvaluationSuite:
    spec: EvaluationSpec
    reward: RewardEvaluator | None
    tasks: list[TaxTask] = field(default_factory=list)

    @classmethod
    def from_spec(cls, spec: EvaluationSpec, device="cpu") -> EvaluationSuite:
        """Build every evaluator up front, so that bad data files fail before any model is touched."""
        reward = _reward_evaluator(spec.reward, device) if spec.reward else None
        return cls(spec, reward, [_task(task) for task in spec.tasks])

    def evaluate(self, model, tokenizer) -> EvaluationResult:
        """The reward (if the spec has one) and every task's scores of ``model``, with their standard errors and
        the evaluation's cost."""
        return self.measure(model, tokenizer).result()

    def measure(self, model, tokenizer, part: DataPart = FULL) -> Measurement:
        """Every evaluator's statistics on ``part`` of its items (all of them by default; see
        :mod:`taxcut.evaluation.subset`) and what it cost; an lm-eval task's items are its documents. A task that
        reports no items is measured in full, on the whole data only. Per-item scores are kept where an evaluator
        gives them (``measure_items``)."""
        with metered() as meter:
            reward = reward_items = None
            if self.reward is not None:
                reward, reward_items = self.reward.measure_items(
                    model, tokenizer, part.items("reward", len(self.reward.records))
                )
            tasks: dict[str, dict[str, Statistic]] = {}
            task_items: dict[str, ItemScores] = {}
            for task in self.tasks:
                if hasattr(task, "measure_items"):
                    tasks[task.name], scores = task.measure_items(
                        model, tokenizer, part.items(f"task:{task.name}", len(task.records))
                    )
                    if scores is not None:  # a metric that is no mean of item scores keeps none (lm-eval)
                        task_items[task.name] = scores
                elif hasattr(task, "measure"):
                    tasks[task.name] = task.measure(
                        model, tokenizer, part.items(f"task:{task.name}", len(task.records))
                    )
                elif part.full:
                    tasks[task.name] = {m: Reported(v) for m, v in task.evaluate(model, tokenizer).items()}
                else:
                    raise TaxcutError(
                        f"task '{task.name}' reports no items, so it cannot be measured on part of the "
                        "data; use 'fidelity: full'"
                    )
                _check_scores(task, {metric: stat.value for metric, stat in tasks[task.name].items()})
        return Measurement(
            reward,
            tasks,
            {task.name: task.primary_metric for task in self.tasks},
            {task.name: task.higher_is_better for task in self.tasks},
            meter.cost(),
            PerItem(reward_items, task_items) or None,
        )

    def fingerprint(self) -> str:
        """What results depend on in the evaluation: its settings, the *contents* of its data files, the reward
        function's source and the reward model's weight files (paths themselves do not count)."""
        # settings left at their defaults do not count, so a setting added later (at a default that keeps what was
        # measured) leaves earlier results valid; MEASUREMENT_VERSION marks a change of a default or of a measure
        data = self.spec.model_dump(mode="json", exclude={"fidelity", "halving"}, exclude_defaults=True)
        data["measurement"] = MEASUREMENT_VERSION
        if self.spec.reward and self.spec.reward.do_sample:  # sampled responses follow the scheme's random streams
            data["sampling_scheme"] = SAMPLING_SCHEME
        if any(task.type == "lm_eval" for task in self.spec.tasks):  # per-document few-shot draws
            from taxcut.evaluation.lmeval import FEWSHOT_SCHEME

            data["lm_eval_fewshot_scheme"] = FEWSHOT_SCHEME
        files = []
        if self.spec.reward:
            files.append(self.spec.reward.prompts)
            data["reward"].pop("prompts")
            if self.spec.reward.function:
                files.append(_function_source(self.spec.reward.function))
                data["reward"]["function"] = self.spec.reward.function.rpartition(":")[2]
            if self.spec.reward.model:
                data["reward"]["model"] = weights_identity(self.spec.reward.model)
        for task, dumped in zip(self.spec.tasks, data.get("tasks", [])):
            if task.path is not None:
                files.append(task.path)
                dumped.pop("path")
            if task.task and task.task.endswith((".yaml", ".yml")):
                files.append(Path(task.task))
                dumped["task"] = Path(task.task).name
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode())
        for path in files:
            if path is not None:
                digest.update(Path(path).read_bytes())
        return digest.hexdigest()[:16]


def _function_source(reference: str) -> Path | None:
    """The file that defines a reward function (``path.py:f`` or ``module:f``), if it can be found."""
    module, _, _ = reference.rpartition(":")
    if module.endswith(".py"):
        return Path(module)
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def _reward_evaluator(spec: RewardSpec, device) -> RewardEvaluator:
    if spec.function is not None:
        scorer = function_scorer(load_reward_function(spec.function))
    else:
        scorer = RewardModelScorer(spec.model, batch_size=spec.batch_size, device=device)
    settings = GenerationSettings(
        max_new_tokens=spec.max_new_tokens,
        do_sample=spec.do_sample,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed,
        batch_size=spec.batch_size,
    )
    return RewardEvaluator(spec.prompts, scorer, settings, spec.samples_per_prompt, spec.limit)


def _task(spec: TaskSpec) -> TaxTask:
    if spec.type == "lm_eval":
        from taxcut.evaluation.lmeval import LmEvalTask

        return LmEvalTask(
            spec.name,
            spec.task,
            limit=spec.limit,
            num_fewshot=spec.num_fewshot,
            batch_size=spec.batch_size,
            metric=spec.metric,
        )
    options = {"limit": spec.limit, "batch_size": spec.batch_size}
    if spec.max_new_tokens is not None:
        options["max_new_tokens"] = spec.max_new_tokens
    if spec.stop is not None:
        options["stop"] = spec.stop
    if spec.metric is not None:  # the tax follows the chosen metric
        options["primary_metric"] = spec.metric
    return TASK_TYPES[spec.type](spec.name, spec.path, **options)


def _check_scores(task: TaxTask, scores: dict[str, float]) -> None:
    """A NaN score, or an infinite primary score, would silently empty the front: an error naming the task."""
    for metric, value in scores.items():
        if math.isnan(value) or (metric == task.primary_metric and math.isinf(value)):
            raise TaxcutError(
                f"task '{task.name}': its {metric} is {value}, not a finite number; check the task's "
                "data (empty answers, texts longer than the model's context) or the model"
            )


def evaluate_folder(model_dir: Path, spec: EvaluationSpec, device: str = "auto") -> EvaluationResult:
    """``taxcut eval``: the same evaluators on one model folder."""
    from taxcut.evaluation.loading import load_causal_lm, load_tokenizer, pick_device

    resolved = pick_device(device)
    suite = EvaluationSuite.from_spec(spec, device=resolved)
    model = load_causal_lm(model_dir, device=resolved)
    return suite.evaluate(model, load_tokenizer(model_dir))
