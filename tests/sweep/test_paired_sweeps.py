"""Sampled sweeps whose records do not depend on how they were run: a halving sweep's full-data records equal a
full sweep's bit for bit, and a Ray sweep's equal the in-process one's, sampled reward and per-item scores
included (every item draws its own random stream, :mod:`taxcut.evaluation.item_sampling`)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.runner import RESULTS_FILE, run_sweep

TESTS = Path(__file__).parent.parent
SAMPLED = {"do_sample": True, "samples_per_prompt": 2, "seed": 3, "temperature": 1.0}
COMPARED = ("reward", "tasks", "primary", "stderr", "primary_stderr", "items")


def write_spec(folder: Path, pair, *, evaluation: dict | None = None, **extra) -> Path:
    """A sampled sweep of MA 0, 0.5 and 1 on 32 prompts and a 32-question task, in ``folder``."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 36)))
    (data / "mc.jsonl").write_text(
        "".join(
            json.dumps({"context": f"w{i}", "choices": [f"w{i + 1}", f"w{i + 7}"], "answer": 0}) + "\n"
            for i in range(4, 36)
        )
    )
    spec = {
        "sft": str(pair[0]),
        "aligned": str(pair[1]),
        "out": str(folder / "out"),
        "candidates": {"grid": [0.0, 0.5, 1.0]},
        "evaluation": {
            "reward": {
                "prompts": str(data / "prompts.jsonl"),
                "function": f"{TESTS / 'rewards.py'}:first_word_number",
                "max_new_tokens": 3,
                **SAMPLED,
            },
            "tasks": [{"name": "mc", "type": "multiple_choice", "path": str(data / "mc.jsonl")}],
            **(evaluation or {}),
        },
        "device": "cpu",
        **extra,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def full_records(results: Path) -> dict[str, dict]:
    """The full-data records by candidate id, without what depends on timing or on how they were measured."""
    rows = {}
    for line in results.read_text().splitlines():
        record = json.loads(line)
        if record.get("share", 1.0) == 1.0:
            rows[record["candidate_id"]] = {k: v for k, v in record.items() if k in COMPARED}
    return rows


def test_a_halving_sweeps_full_data_records_equal_a_full_sweeps_bit_for_bit(llama_pair, tmp_path):
    run_sweep(SweepSpec.from_yaml(write_spec(tmp_path / "full", llama_pair)), progress=False)
    halving = write_spec(
        tmp_path / "halving", llama_pair, evaluation={"fidelity": "halving", "halving": {"start": 0.25}}
    )
    run_sweep(SweepSpec.from_yaml(halving), progress=False)
    full = full_records(tmp_path / "full" / "out" / RESULTS_FILE)
    staged = full_records(tmp_path / "halving" / "out" / RESULTS_FILE)
    assert len(full) == 3 and 2 <= len(staged) <= 3  # the SFT and aligned models always finish
    for candidate_id, record in staged.items():
        assert record["reward"]["samples"] == 64 and len(record["items"]["reward"]["items"]) == 64
        assert record == full[candidate_id]  # json floats: equal here is equal bits
    rewards = [v for r in full.values() for v in r["items"]["reward"]["values"]]
    assert len(set(rewards)) > 1  # the sampled rewards vary: the comparison is not of constants
