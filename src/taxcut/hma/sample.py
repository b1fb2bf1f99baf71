"""``taxcut sample``: the fit set of HMA — the best-reward responses of the aligned model to its RLHF prompts.

The paper samples the aligned policy on the RLHF prompts and keeps ~2,000 responses out of its top 5,000 by
reward; here: ``n`` samples per prompt, scored by the sweep's reward scorers, the top ``keep`` overall.

Seeding: sample ``j`` of the prompt on line ``i + 1`` draws from its own random stream ``(seed, i, j)``
(:mod:`taxcut.evaluation.item_sampling`). The prompts are taken in shards of ``shard_size`` in file order, run on
the executor's workers (in this process by default), and their rows are put back in shard order before the best are
kept, so the fit set is the same byte for byte whichever executor, however many workers and whatever ``shard_size``
ran it -- for the same ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from taxcut.errors import TaxcutError
from taxcut.evaluation.data import prompt_problem, read_jsonl
from taxcut.evaluation.generation import GenerationSettings, render_prompt
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer, pick_device
from taxcut.evaluation.reward import RewardEvaluator, RewardModelScorer, function_scorer, load_reward_function
from taxcut.execution import Executor, LocalExecutor
from taxcut.io.destination import check_destination, staged_file

SHARD_SIZE = 32  # prompts per shard: the unit of work of a worker and of the seed stream


def sample_fit_set(
    model: Path,
    prompts: Path,
    out: Path,
    *,
    n: int,
    keep: int,
    reward_model: Path | None = None,
    reward_function: str | None = None,
    settings: GenerationSettings | None = None,
    device: str = "auto",
    overwrite: bool = False,
    executor: Executor | None = None,
    shard_size: int = SHARD_SIZE,
) -> list[dict]:
    """Write the ``keep`` best of ``n`` sampled responses per prompt as JSONL (prompt, response, reward), under the
    destination policy (checked before any sampling; never over the prompts, the model or a foreign file). The
    prompts are sampled in shards on ``executor`` (the module's seeding)."""
    if (reward_model is None) == (reward_function is None):
        raise TaxcutError("give exactly one of --reward-model DIR or --reward-function module:function")
    if n < 1 or keep < 1 or shard_size < 1:
        raise TaxcutError("--n, --keep and --shard-size must be at least 1")
    module = (reward_function or "").rpartition(":")[0]
    inputs = [
        ("model", model),
        ("prompts", prompts),
        ("reward model", reward_model),
        ("reward function", Path(module) if module.endswith(".py") else None),
    ]
    check_destination(out, overwrite=overwrite, inputs=inputs, kind="fit set", folder=False)
    if reward_function:
        load_reward_function(reward_function)  # a bad reference fails here, before any worker loads a model
    count = len(read_jsonl(prompts, needs=[("prompt", "messages")], what="prompts", check=prompt_problem))
    work = FitSetSampling(
        model,
        prompts,
        n,
        settings or GenerationSettings(do_sample=True, max_new_tokens=64),
        reward_model,
        reward_function,
        device,
    )
    shards = [(k, start, min(start + shard_size, count)) for k, start in enumerate(range(0, count, shard_size))]
    by_shard = {shard[0]: rows for shard, rows in (executor or LocalExecutor()).map(work, shards)}
    rows = [row for k in range(len(shards)) for row in by_shard[k]]
    rows.sort(key=lambda row: -row["reward"])  # stable: equal rewards stay in prompt order
    kept = rows[:keep]
    with staged_file(out, overwrite=overwrite, inputs=inputs, kind="fit set") as partial:
        partial.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return kept


@dataclass(frozen=True)
class FitSetSampling:
    """The sampling of one shard of prompts per item ``(shard, first, stop)`` on an executor's worker: the policy,
    its tokenizer and the reward scorer loaded once per worker."""

    model: Path
    prompts: Path
    n: int
    settings: GenerationSettings
    reward_model: Path | None = None
    reward_function: str | None = None
    device: str = "auto"

    def setup(self):
        resolved = pick_device(self.device)
        scorer = (
            function_scorer(load_reward_function(self.reward_function))
            if self.reward_function
            else RewardModelScorer(self.reward_model, device=resolved)
        )
        evaluator = RewardEvaluator(self.prompts, scorer, self.settings, samples_per_prompt=self.n)
        policy, tokenizer = load_causal_lm(self.model, device=resolved), load_tokenizer(self.model)
        evaluator.check_context(policy, tokenizer)  # every shard's prompts, before the first one is sampled

        def sample(shard: tuple[int, int, int]) -> list[dict]:
            _, first, stop = shard
            records = [r for r in evaluator.records[first:stop] for _ in range(self.n)]
            plain, responses = evaluator.responses(policy, tokenizer, range(first, stop))
            rewards = scorer(plain, responses)
            return [
                {
                    "prompt": render_prompt(record, tokenizer),
                    "response": response,
                    "reward": float(reward),
                    "chat": record.get("prompt") is None,
                }  # the response as generated; chat: template tokens
                for record, response, reward in zip(records, responses, rewards)
                if response.strip()
            ]

        return sample
