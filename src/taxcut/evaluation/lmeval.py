"""lm-evaluation-harness tasks (extra ``taxcut[lmeval]``), by name or local YAML, run on the model in memory."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

from taxcut.errors import TaxcutError

_PREFERRED_METRICS = ("acc_norm", "acc", "exact_match", "f1", "em", "bleu", "word_perplexity", "perplexity")


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise TaxcutError("lm-evaluation-harness tasks need the extra: pip install 'taxcut[lmeval]'") from None


@dataclass
class LmEvalTask:
    """One lm-eval task. ``task`` is a task name, or the path of a local task YAML (its folder is indexed alone,
    so no default task index is built and nothing is downloaded for local ``dataset_path: json`` data)."""

    name: str
    task: str
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 16
    metric: str | None = None

    def __post_init__(self) -> None:
        _require_lm_eval()
        from lm_eval.tasks import TaskManager

        path = Path(self.task)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise TaxcutError(f"{path}: lm-eval task YAML not found")
            import yaml

            self.task_name = (yaml.safe_load(path.read_text()) or {}).get("task")
            if not self.task_name:
                raise TaxcutError(f"{path}: an lm-eval task YAML needs a 'task' name")
            self.manager = TaskManager(include_path=str(path.parent), include_defaults=False)
        else:
            self.task_name = self.task
            self.manager = TaskManager()
        known = self.manager.all_tasks
        if self.task_name not in known:
            close = difflib.get_close_matches(self.task_name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TaxcutError(f"unknown lm-eval task {self.task_name!r}{hint}")
        self.primary_metric = self.metric or ""
        self.higher_is_better = True

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        results = simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size),
            tasks=[self.task_name], task_manager=self.manager, limit=self.limit, num_fewshot=self.num_fewshot,
            log_samples=False, bootstrap_iters=0,
        )
        raw = results["results"][self.task_name]
        scores = {key.split(",")[0]: float(value) for key, value in raw.items()
                  if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
        if not scores:
            raise TaxcutError(f"lm-eval task {self.task_name!r} reported no numeric metric")
        if not self.primary_metric:
            self.primary_metric = next((m for m in _PREFERRED_METRICS if m in scores), sorted(scores)[0])
        if self.primary_metric not in scores:
            raise TaxcutError(f"lm-eval task {self.task_name!r} has no metric {self.primary_metric!r}; it reports "
                              f"{', '.join(sorted(scores))}")
        directions = results.get("higher_is_better", {}).get(self.task_name, {})
        self.higher_is_better = bool(directions.get(self.primary_metric, True))
        return scores
