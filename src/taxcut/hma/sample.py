"""``taxcut sample``: the fit set of HMA — the best-reward responses of the aligned model to its RLHF prompts.

The paper samples the aligned policy on the RLHF prompts and keeps ~2,000 responses out of its top 5,000 by
reward; here: ``n`` samples per prompt, scored by the sweep's reward scorers, the top ``keep`` overall.

Seeding: the prompts are taken in shards of ``shard_size`` in file order, and shard ``k`` samples with its own seed,
:func:`shard_seed` ``(seed, k)``. The shards run on the executor's workers (in this process by default) and their
rows are put back in shard order before the best are kept, so the fit set is the same byte for byte whichever
executor and however many workers ran it -- for the same ``seed`` and ``shard_size``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from taxcut.errors import TaxcutError
from taxcut.evaluation.data import prompt_problem, read_jsonl
from taxcut.evaluation.generation import GenerationSettings, render_prompt
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer, pick_device
from taxcut.evaluation.reward import RewardEvaluator, RewardModelScorer, function_scorer, load_reward_function
from taxcut.execution import Executor, LocalExecutor
from taxcut.io.destination import check_destination, staged_file

SHARD_SIZE = 32  # prompts per shard: the unit of work of a worker and of the seed stream


def sample_fit_set(model: Path, prompts: Path, out: Path, *, n: int, keep: int, reward_model: Path | None = None,
                   reward_function: str | None = None, settings: GenerationSettings | None = None,
                   device: str = "auto", overwrite: bool = False, executor: Executor | None = None,
                   shard_size: int = SHARD_SIZE) -> list[dict]:
    """Write the ``keep`` best of ``n`` sampled responses per prompt as JSONL (prompt, response, reward), under the
    destination policy (checked before any sampling; never over the prompts, the model or a foreign file). The
    prompts are sampled in shards on ``executor`` (the module's seeding)."""
    if (reward_model is None) == (reward_function is None):
        raise TaxcutError("give exactly one of --reward-model DIR or --reward-function module:function")
    if n < 1 or keep < 1 or shard_size < 1:
        raise TaxcutError("--n, --keep and --shard-size must be at least 1")
    module = (reward_function or "").rpartition(":")[0]
    inputs = [("model", model), ("prompts", prompts), ("reward model", reward_model),
              ("reward function", Path(module) if module.endswith(".py") else None)]
    check_destination(out, overwrite=overwrite, inputs=inputs, kind="fit set", folder=False)
    if reward_function:
        load_reward_function(reward_function)  # a bad reference fails here, before any worker loads a model
    count = len(read_jsonl(prompts, needs=[("prompt", "messages")], what="prompts", check=prompt_problem))
    work = FitSetSampling(model, prompts, n, settings or GenerationSettings(do_sample=True, max_new_tokens=64),
                          reward_model, reward_function, device)
    shards = [(k, start, min(start + shard_size, count)) for k, start in enumerate(range(0, count, shard_size))]
    by_shard = {shard[0]: rows for shard, rows in (executor or LocalExecutor()).map(work, shards)}
    rows = [row for k in range(len(shards)) for row in by_shard[k]]
    rows.sort(key=lambda row: -row["reward"])  # stable: equal rewards stay in prompt order
    kept = rows[:keep]
    with staged_file(out, overwrite=overwrite, inputs=inputs, kind="fit set") as partial:
        partial.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return kept


def shard_seed(seed: int, shard: int) -> int:
    """The sampling seed of shard ``shard``: the first 8 bytes of sha256("taxcut-sample:SEED:SHARD"), below 2**63."""
    digest = hashlib.sha256(f"taxcut-sample:{seed}:{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


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
        scorer = (function_scorer(load_reward_function(self.reward_function)) if self.reward_function
                  else RewardModelScorer(self.reward_model, device=resolved))
        evaluator = RewardEvaluator(self.prompts, scorer, self.settings, samples_per_prompt=self.n)
        policy, tokenizer = load_causal_lm(self.model, device=resolved), load_tokenizer(self.model)

        def sample(shard: tuple[int, int, int]) -> list[dict]:
            number, first, stop = shard
            part = copy.copy(evaluator)
            part.records = evaluator.records[first:stop]
            part.settings = replace(self.settings, seed=shard_seed(self.settings.seed, number))
            records = [r for r in part.records for _ in range(self.n)]
            plain, responses = part.responses(policy, tokenizer)
            rewards = scorer(plain, responses)
            return [{"prompt": render_prompt(record, tokenizer), "response": response, "reward": float(reward),
                     "chat": record.get("prompt") is None}  # the response as generated; chat: template tokens
                    for record, response, reward in zip(records, responses, rewards) if response.strip()]

        return sample
