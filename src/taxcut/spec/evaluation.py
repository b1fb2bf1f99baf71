"""How to measure a model: the reward axis and the benchmarks whose drop is the alignment tax."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from taxcut.io.hub import is_hub_id


class RewardSpec(BaseModel):
    """Responses to ``prompts`` (JSONL: ``prompt`` or ``messages``), scored by a reward ``model`` folder or Hub ID
    (``AutoModelForSequenceClassification``) or a ``function`` ``module:function(prompt, response) -> float``."""

    model_config = ConfigDict(extra="forbid")

    prompts: Path
    model: Path | None = None
    function: str | None = None
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    samples_per_prompt: int = Field(1, ge=1)
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_scorer(self) -> RewardSpec:
        if (self.model is None) == (self.function is None):
            raise ValueError("give exactly one of 'model' (a reward model folder) or 'function' (module:function)")
        return self


# The metrics each built-in task type reports; the first is its primary metric (the one its tax follows) unless the
# task's ``metric`` chooses another. Lower is better for the perplexity task's metrics, higher for the others.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "generation": ("exact_match", "f1", "contains"),
    "multiple_choice": ("acc", "acc_norm"),
    "bleu": ("bleu",),
    "perplexity": ("nll", "perplexity"),
}


def metric_problem(task_type: str, metric: str) -> str | None:
    """Why ``metric`` cannot be the primary metric of a built-in ``task_type`` task, or None if it can."""
    valid = TASK_METRICS.get(task_type)
    if valid is None or metric in valid:
        return None
    return f"metric {metric!r} does not apply to a {task_type} task; choose one of {', '.join(valid)}"


class TaskSpec(BaseModel):
    """One benchmark: a built-in JSONL task (``path``) or an lm-evaluation-harness task (``task``: name or YAML).

    ``metric`` chooses the primary metric, the one the tax follows: for built-in tasks one of
    :data:`TASK_METRICS` (default: the first), for lm_eval tasks one the task reports."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: Literal["multiple_choice", "generation", "bleu", "perplexity", "lm_eval"]
    path: Path | None = None
    task: str | None = None
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    stop: list[str] | None = None
    num_fewshot: int | None = Field(None, ge=0)
    metric: str | None = None

    @model_validator(mode="after")
    def _source(self) -> TaskSpec:
        if self.type == "lm_eval":
            if self.task is None or self.path is not None:
                raise ValueError(
                    f"task '{self.name}': an lm_eval task takes 'task' (a name or a YAML path), not 'path'"
                )
        elif self.path is None or self.task is not None:
            raise ValueError(f"task '{self.name}': a {self.type} task takes 'path' (a JSONL file), not 'task'")
        if self.type not in ("generation", "bleu") and (self.max_new_tokens is not None or self.stop is not None):
            raise ValueError(f"task '{self.name}': 'max_new_tokens' and 'stop' apply to generation and bleu tasks")
        if self.type != "lm_eval" and self.num_fewshot is not None:
            raise ValueError(f"task '{self.name}': 'num_fewshot' applies to lm_eval tasks")
        problem = metric_problem(self.type, self.metric) if self.metric is not None else None
        if problem is not None:
            raise ValueError(f"task '{self.name}': {problem}")
        return self


class HalvingSpec(BaseModel):
    """Successive halving (:mod:`taxcut.sweep.halving`): first ``start`` of the items, times ``factor`` per stage up
    to all of them; a candidate dominated beyond the noise at one-sided ``level`` is dropped, and so is one whose
    best case adds less than ``tolerance`` of the front's hypervolume (1%; 0 drops only what is dominated);
    ``seed`` picks the items."""

    model_config = ConfigDict(extra="forbid")

    start: float = Field(0.125, gt=0, lt=1)
    factor: float = 2.0
    level: float = Field(0.05, gt=0, lt=0.5)
    seed: int = 0
    tolerance: float = Field(0.01, ge=0, lt=1)

    @field_validator("factor")
    @classmethod
    def _factor(cls, factor: float) -> float:
        if not factor >= 1.5:  # also refuses NaN; a factor near 1 makes a stage per item, each a round of decisions
            raise ValueError(
                f"is {factor}; it must be at least 1.5 (each stage measures the survivors on factor "
                "times the items of the last: 2 by default)"
            )
        return factor


class EvaluationSpec(BaseModel):
    """The reward and the tax's tasks; ``fidelity: halving`` makes a sweep measure its candidates by successive
    halving on the items (``halving`` sets it up), ``full`` (the default) on all the data."""

    model_config = ConfigDict(extra="forbid")

    reward: RewardSpec | None = None
    tasks: list[TaskSpec] = []
    fidelity: Literal["full", "halving"] = "full"
    halving: HalvingSpec = HalvingSpec()

    @model_validator(mode="after")
    def _something(self) -> EvaluationSpec:
        if self.reward is None and not self.tasks:
            raise ValueError("give a 'reward' section, 'tasks', or both")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        return self

    @model_validator(mode="after")
    def _halving(self) -> EvaluationSpec:
        # every task type can be halved: an lm_eval task's items are its documents (taxcut.evaluation.lmeval)
        if self.fidelity != "halving" and "halving" in self.model_fields_set:
            raise ValueError("'halving' applies to 'fidelity: halving'")
        return self

    def input_files(self) -> list[tuple[str, Path]]:
        """Every file and folder the evaluation reads, as (role, path): no output may land on them."""
        found: list[tuple[str, Path]] = []
        if self.reward is not None:
            found.append(("reward prompts", self.reward.prompts))
            if self.reward.model is not None:
                found.append(("reward model", self.reward.model))
            module, sep, _ = (self.reward.function or "").rpartition(":")
            if sep and module.endswith(".py"):
                found.append(("reward function", Path(module)))
        for task in self.tasks:
            if task.path is not None:
                found.append((f"task '{task.name}' data", task.path))
            if task.task and task.task.endswith((".yaml", ".yml")):
                found.append((f"task '{task.name}'", Path(task.task)))
        return found

    def relative_to(self, folder: Path) -> EvaluationSpec:
        """The same spec with relative file paths made relative to ``folder`` (the spec file's); a reward model
        given as a Hub repo ID stays as written."""

        def fix(path):
            return path if path is None or path.is_absolute() else folder / path

        reward = None
        if self.reward is not None:
            model = self.reward.model
            update = {
                "prompts": fix(self.reward.prompts),
                "model": model if model is not None and is_hub_id(model, folder) else fix(model),
            }
            module, sep, function = (self.reward.function or "").rpartition(":")
            if sep and module.endswith(".py") and not Path(module).is_absolute():
                update["function"] = f"{folder / module}:{function}"
            reward = self.reward.model_copy(update=update)
        tasks = []
        for task in self.tasks:
            update = {"path": fix(task.path)}
            if task.task and task.task.endswith((".yaml", ".yml")) and not Path(task.task).is_absolute():
                update["task"] = str(folder / task.task)
            tasks.append(task.model_copy(update=update))
        return self.model_copy(update={"reward": reward, "tasks": tasks})
