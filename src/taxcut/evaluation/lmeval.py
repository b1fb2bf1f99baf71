"""lm-evaluation-harness tasks (extra ``taxcut[lmeval]``), by name or local YAML, run on the model in memory.

A task is measured document by document: the harness evaluates the chosen documents
(``simple_evaluate(samples={task: [indices]})``) and logs each one's metrics (``log_samples``), so a metric the
harness aggregates as a mean (``acc``, ``acc_norm``, ``exact_match``, ...) becomes a
:class:`~taxcut.evaluation.stats.Mean` over documents, with its standard error and the primary metric's score per
document (keyed by the document's index: :class:`~taxcut.evaluation.paired.ItemScores`). Successive halving then
measures an lm-eval task on the same nested subsets as any other task (:mod:`taxcut.evaluation.subset`), and a
candidate's stages merge into exactly its full run's score. A metric the harness aggregates otherwise (corpus BLEU,
perplexity) is reported only by a run on all documents (:class:`~taxcut.evaluation.stats.Reported`, no items);
such a primary metric cannot be measured on part of the documents (use ``fidelity: full``).

Few-shot examples: the harness draws them from one random stream per task, in document order, so a document's
examples would depend on which documents ran before it. taxcut seeds each document's draw from the document itself
(:data:`FEWSHOT_SCHEME`), so a document gets the same examples in any subset; few-shot scores can therefore differ
from the harness's own command line by the choice of examples.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from taxcut.errors import TaxcutError
from taxcut.evaluation.paired import ItemScores
from taxcut.evaluation.stats import Mean, Reported, Statistic

_PREFERRED_METRICS = ("acc_norm", "acc", "exact_match", "f1", "em", "bleu", "word_perplexity", "perplexity")
FEWSHOT_SCHEME = 1  # per-document few-shot draws; recorded in the evaluation's fingerprint


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise TaxcutError("lm-evaluation-harness tasks need the extra: pip install 'taxcut[lmeval]'") from None


@dataclass
class LmEvalTask:
    """One lm-eval task. ``task`` is a task name, or the path of a local task YAML (its folder is indexed alone,
    so no default task index is built and nothing is downloaded for local ``dataset_path: json`` data).
    ``records`` stands for its documents (the first ``limit``), as a built-in task's records do."""

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
        self.means: set[str] = set()  # the metrics the harness aggregates as a mean over documents
        self.records: Sequence[int] = range(0)  # a group of tasks has no documents of its own
        self._inspect()

    def _inspect(self) -> None:
        """The documents, metrics and directions of a single task, from the task object (loads its data once)."""
        from lm_eval.api.metrics import mean

        loaded = self.manager.load([self.task_name])
        task = loaded["tasks"].get(self.task_name)
        if task is None or loaded["groups"]:
            return
        documents = len(task.eval_docs)
        self.records = range(min(documents, self.limit) if self.limit is not None else documents)
        aggregations = task.aggregation()
        self.means = {metric for metric, function in aggregations.items() if function is mean}
        if not self.primary_metric:
            self.primary_metric = next((m for m in _PREFERRED_METRICS if m in aggregations), "")
        self.higher_is_better = bool(task.higher_is_better().get(self.primary_metric, True))

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        return {metric: stat.value for metric, stat in self.measure(model, tokenizer).items()}

    def measure(self, model, tokenizer, items: Sequence[int] | None = None) -> dict[str, Statistic]:
        """The task's metrics over the documents ``items`` (indices; default: all of the first ``limit``)."""
        return self.measure_items(model, tokenizer, items)[0]

    def measure_items(
        self, model, tokenizer, items: Sequence[int] | None = None
    ) -> tuple[dict[str, Statistic], ItemScores | None]:
        """:meth:`measure`, and the primary metric's score of each document when it is a mean over documents."""
        documents = None if items is None else sorted(int(i) for i in items)
        if documents is not None and not self.records:
            raise TaxcutError(
                f"lm-eval task '{self.name}' is a group of tasks, measured on all its documents only; "
                "use 'fidelity: full' or name its tasks one by one"
            )
        if documents is not None and self.primary_metric not in self.means:
            raise TaxcutError(
                f"lm-eval task '{self.name}': its {self.primary_metric or 'score'} is not a mean of "
                "per-document scores, so it cannot be measured on part of the documents; use "
                "'fidelity: full' or a mean metric such as acc"
            )
        results = self._run(model, tokenizer, documents)
        scores = self._reported(results)
        stats: dict[str, Statistic] = {}
        per_document = _per_document(results.get("samples", {}).get(self.task_name, []), self.means, scores)
        for metric, (_, value) in scores.items():
            if metric in per_document:
                values = [v for _, v in per_document[metric]]
                stats[metric] = Mean.of(values, binary=all(v in (0.0, 1.0) for v in values))
            elif documents is None:
                stats[metric] = Reported(value)
        self._check_primary(stats, results)
        primary = per_document.get(self.primary_metric)
        return stats, ItemScores.of([k for k, _ in primary], [v for _, v in primary]) if primary else None

    def _run(self, model, tokenizer, documents: list[int] | None) -> dict:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        with _per_document_fewshot():
            return simple_evaluate(
                model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size),
                tasks=[self.task_name],
                task_manager=self.manager,
                num_fewshot=self.num_fewshot,
                limit=self.limit if documents is None else None,
                samples=None if documents is None else {self.task_name: _Indices(documents)},
                log_samples=True,
                bootstrap_iters=0,
            )

    def _reported(self, results: dict) -> dict[str, tuple[str, float]]:
        """Each numeric metric the harness reported: (its filter, its value); the first filter where several."""
        scores: dict[str, tuple[str, float]] = {}
        for key, value in results["results"][self.task_name].items():
            metric, _, filtered = key.partition(",")
            if filtered and "_stderr" not in metric and isinstance(value, (int, float)):
                scores.setdefault(metric, (filtered, float(value)))
        if not scores:
            raise TaxcutError(f"lm-eval task {self.task_name!r} reported no numeric metric")
        return scores

    def _check_primary(self, stats: dict[str, Statistic], results: dict) -> None:
        if not self.primary_metric:
            self.primary_metric = next((m for m in _PREFERRED_METRICS if m in stats), sorted(stats)[0])
            directions = results.get("higher_is_better", {}).get(self.task_name, {})
            self.higher_is_better = bool(directions.get(self.primary_metric, True))
        if self.primary_metric not in stats:
            raise TaxcutError(
                f"lm-eval task {self.task_name!r} has no metric {self.primary_metric!r}; it reports "
                f"{', '.join(sorted(stats))}"
            )


def _per_document(
    samples: list[dict], means: set[str], scores: dict[str, tuple[str, float]]
) -> dict[str, list[tuple[int, float]]]:
    """Each mean metric's (document index, score) in document order, from the harness's logged samples (the
    reported filter's)."""
    found: dict[str, list[tuple[int, float]]] = {}
    for metric, (filtered, _) in scores.items():
        if metric not in means:
            continue
        rows = sorted((int(s["doc_id"]), s[metric]) for s in samples if s.get("filter") == filtered and metric in s)
        if rows and all(isinstance(v, (bool, int, float)) for _, v in rows):
            found[metric] = [(doc, float(v)) for doc, v in rows]
    return found


class _Indices(list):
    """Document indices for ``samples=``: the harness tests each document's index for membership, so a set makes
    choosing k of n documents O(n), not O(n k)."""

    def __init__(self, indices: list[int]):
        super().__init__(indices)
        self._members = frozenset(indices)

    def __contains__(self, index) -> bool:
        return index in self._members


def _document_seed(document) -> str:
    text = json.dumps(document, sort_keys=True, default=str, ensure_ascii=False)
    return f"taxcut-fewshot:{FEWSHOT_SCHEME}:{hashlib.sha256(text.encode()).hexdigest()}"


@contextlib.contextmanager
def _per_document_fewshot() -> Iterator[None]:
    """While the harness runs, each document's few-shot examples are drawn from a stream seeded by the document
    (the module's note), not from the task's one stream in document order."""
    from lm_eval.api.task import ConfigurableTask

    original = ConfigurableTask.fewshot_context

    def fewshot_context(self, doc, *args, **kwargs):
        sampler = getattr(self, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_rnd"):
            sampler.set_rnd(_document_seed(doc))
        return original(self, doc, *args, **kwargs)

    ConfigurableTask.fewshot_context = fewshot_context
    try:
        yield
    finally:
        ConfigurableTask.fewshot_context = original
