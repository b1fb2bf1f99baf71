"""``taxcut sample``: the fit set of HMA — the best-reward responses of the aligned model to its RLHF prompts.

The paper samples the aligned policy on the RLHF prompts and keeps ~2,000 responses out of its top 5,000 by
reward; here: ``n`` samples per prompt, scored by the sweep's reward scorers, the top ``keep`` overall.
"""

from __future__ import annotations

import json
from pathlib import Path

from taxcut.errors import TaxcutError
from taxcut.evaluation.generation import GenerationSettings
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer, pick_device
from taxcut.evaluation.reward import RewardEvaluator, RewardModelScorer, function_scorer, load_reward_function
from taxcut.io.destination import check_destination, staged_file


def sample_fit_set(model: Path, prompts: Path, out: Path, *, n: int, keep: int, reward_model: Path | None = None,
                   reward_function: str | None = None, settings: GenerationSettings | None = None,
                   device: str = "auto", overwrite: bool = False) -> list[dict]:
    """Write the ``keep`` best of ``n`` sampled responses per prompt as JSONL (prompt, response, reward), under the
    destination policy (checked before any sampling; never over the prompts, the model or a foreign file)."""
    if (reward_model is None) == (reward_function is None):
        raise TaxcutError("give exactly one of --reward-model DIR or --reward-function module:function")
    if n < 1 or keep < 1:
        raise TaxcutError("--n and --keep must be at least 1")
    module = (reward_function or "").rpartition(":")[0]
    inputs = [("model", model), ("prompts", prompts), ("reward model", reward_model),
              ("reward function", Path(module) if module.endswith(".py") else None)]
    check_destination(out, overwrite=overwrite, inputs=inputs, kind="fit set", folder=False)
    resolved = pick_device(device)
    scorer = (function_scorer(load_reward_function(reward_function)) if reward_function
              else RewardModelScorer(reward_model, device=resolved))
    settings = settings or GenerationSettings(do_sample=True, max_new_tokens=64)
    evaluator = RewardEvaluator(prompts, scorer, settings, samples_per_prompt=n)
    policy, tokenizer = load_causal_lm(model, device=resolved), load_tokenizer(model)
    from taxcut.evaluation.generation import render_prompt

    records = [r for r in evaluator.records for _ in range(n)]
    plain, responses = evaluator.responses(policy, tokenizer)
    rewards = scorer(plain, responses)
    rows = [{"prompt": render_prompt(record, tokenizer), "response": response, "reward": float(reward),
             "chat": record.get("prompt") is None}  # the response exactly as generated; chat: template tokens
            for record, response, reward in zip(records, responses, rewards) if response.strip()]
    rows.sort(key=lambda row: -row["reward"])
    kept = rows[:keep]
    with staged_file(out, overwrite=overwrite, inputs=inputs, kind="fit set") as partial:
        partial.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return kept
