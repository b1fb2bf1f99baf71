"""Sweeps that spend less: the adaptive grid and successive halving through ``taxcut sweep``, killed and resumed,
and their cost account."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from killed_sweep import kill_sweep_after

from taxcut.cli import main
from taxcut.errors import TaxcutError
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.halving import stage_context
from taxcut.sweep.runner import RESULTS_FILE, run_sweep

TESTS = Path(__file__).parent.parent


def write_spec(
    tmp_path: Path, pair, *, candidates: dict, evaluation: dict | None = None, function: str = "first_word_number"
) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
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
        "out": "sweep-out",
        "candidates": candidates,
        "evaluation": {
            "reward": {
                "prompts": "data/prompts.jsonl",
                "function": f"{TESTS / 'rewards.py'}:{function}",
                "max_new_tokens": 2,
            },
            "tasks": [{"name": "mc", "type": "multiple_choice", "path": "data/mc.jsonl"}],
            **(evaluation or {}),
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def lines(path: Path) -> list[dict]:
    """The complete lines, each with its share of the data (a full-data line has none: 1)."""
    return [{"share": 1.0, **json.loads(line)} for line in path.read_text().splitlines() if line.endswith("}")]


def test_adaptive_grid_sweep(llama_pair, tmp_path, capsys):
    path = write_spec(
        tmp_path, llama_pair, candidates={"strategy": "adaptive", "budget": 5, "block_patterns": [[0.2, 0.5, 0.8]]}
    )
    assert main(["sweep", str(path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    records = lines(tmp_path / "sweep-out" / RESULTS_FILE)
    labels = [r["label"] for r in records]
    assert labels[:4] == ["MA a=0", "MA a=0.5", "MA a=1", "blocks [0.2, 0.5, 0.8]"]  # the start: budget 5 in all
    # at most the budget: a fifth only where a segment can still add to the front (these tiny models' points are
    # noise, and the block profile may already dominate every segment)
    assert len(records) in (4, 5) and all(r["share"] == 1.0 for r in records)
    for record in records[4:]:
        fifth = record["candidate"]
        assert fifth.get("alpha") in (0.25, 0.75) or record["kind"] == "blocks"  # a midpoint of one family
    assert "evaluation cost:" in printed and "generated" in printed
    report = run_sweep(SweepSpec.from_yaml(path), progress=False)  # all done: nothing evaluated again
    assert len(lines(tmp_path / "sweep-out" / RESULTS_FILE)) == len(records)
    assert len(report.rows) == len(records) and report.cost.candidates == len(records)
    assert report.cost.spent.tokens == sum(
        r["cost"]["generated_tokens"] + r["cost"]["scored_tokens"] for r in records
    )  # the account adds up
    assert all(row.tax_stderr >= 0 for row in report.rows)
    assert all(row.pareto_within_noise for row in report.rows if row.pareto)


def test_adaptive_grid_with_halving_spends_at_most_its_budget_in_full_evaluations(llama_pair, tmp_path):
    path = write_spec(
        tmp_path,
        llama_pair,
        candidates={"strategy": "adaptive", "budget": 5, "block_patterns": [[0.2, 0.5, 0.8]]},
        evaluation={"fidelity": "halving", "halving": {"start": 0.25}},
    )
    report = run_sweep(SweepSpec.from_yaml(path), progress=False)
    shares: dict[str, float] = {}
    for record in lines(tmp_path / "sweep-out" / RESULTS_FILE):
        shares[record["candidate_id"]] = max(shares.get(record["candidate_id"], 0.0), record["share"])
    assert len(shares) >= 4 and sum(shares.values()) <= 5.0  # a dropped candidate counts its share
    assert {c.id for c in report.strategy.candidates} == set(shares)
    dropped = report.strategy.dropped
    assert all(shares[cid] == share < 1.0 for cid, share in dropped.items())
    assert all(shares[row.id] == 1.0 for row in report.rows)


def test_halving_sweep_labels_its_stages_and_reports_full_data_only(llama_pair, tmp_path):
    path = write_spec(
        tmp_path,
        llama_pair,
        candidates={"grid": [0.0, 0.5, 1.0]},
        evaluation={"fidelity": "halving", "halving": {"start": 0.25}},
    )
    report = run_sweep(SweepSpec.from_yaml(path), progress=False)
    records = lines(tmp_path / "sweep-out" / RESULTS_FILE)
    full_context = next(r["context"] for r in records if r["share"] == 1.0)
    for record in records:
        assert record["context"] == stage_context(full_context, record["share"], 0)
        assert ("stats" in record) == (record["share"] < 1.0)
    sft = [r["share"] for r in records if r["label"] == "MA a=0"]
    assert sft == [0.25, 0.5, 1.0]  # the baseline goes through every stage and ends on all the data
    assert [r["share"] for r in records if r["label"] == "MA a=1"][-1] == 1.0  # the aligned model is never dropped
    staged = {(r["candidate_id"], r["share"]) for r in records}
    assert len(staged) == len(records)  # each stage of each candidate once
    finished = {r["candidate_id"] for r in records if r["share"] == 1.0}
    assert {row.id for row in report.rows} == finished  # the report reads full-data results only
    dropped = set(report.strategy.dropped)
    assert finished | dropped == {r["candidate_id"] for r in records} and not finished & dropped
    full = [r for r in records if r["share"] == 1.0]
    assert all(r["reward"]["samples"] == 32 for r in full)  # 8 + 8 + 16 prompts, merged
    # the cost account: survivors' full cost, the dropped at their last stage, and the estimate of all in full
    assert report.cost.candidates == 3 and report.cost.partial == len(dropped)
    assert report.cost.full.tokens >= report.cost.spent.tokens
    assert run_sweep(SweepSpec.from_yaml(path), progress=False).rows == report.rows
    assert len(lines(tmp_path / "sweep-out" / RESULTS_FILE)) == len(records)  # resumed: nothing measured again


def test_killed_halving_sweep_resumes_and_redoes_nothing(llama_pair, tmp_path):
    path = write_spec(
        tmp_path,
        llama_pair,
        candidates={"grid": [0.0, 0.25, 0.5, 0.75, 1.0]},
        evaluation={"fidelity": "halving", "halving": {"start": 0.25}},
        function="slow_first_word_number",
    )
    results = tmp_path / "sweep-out" / RESULTS_FILE
    before = kill_sweep_after(path, results, lines=4)
    run_sweep(SweepSpec.from_yaml(path), progress=False)
    after = results.read_bytes()
    assert after.startswith(before)  # nothing written is lost or rewritten
    stages = [(r["candidate_id"], r["share"]) for r in lines(results)]
    assert len(stages) == len(set(stages))  # no stage of any candidate measured twice
    assert any(share < 1.0 for _, share in stages) and any(share == 1.0 for _, share in stages)


def test_strategy_settings_are_checked(llama_pair, tmp_path):
    path = write_spec(tmp_path, llama_pair, candidates={"grid": [0.5], "budget": 4})
    with pytest.raises(TaxcutError, match="'budget' applies to 'strategy: adaptive'"):
        SweepSpec.from_yaml(path)
    path = write_spec(tmp_path, llama_pair, candidates={"grid": [0.5]}, evaluation={"halving": {"start": 0.5}})
    with pytest.raises(TaxcutError, match="'halving' applies to 'fidelity: halving'"):
        SweepSpec.from_yaml(path)
    path = write_spec(
        tmp_path, llama_pair, candidates={"strategy": "adaptive", "budget": 3, "block_patterns": [[0.2, 0.5, 0.8]]}
    )
    with pytest.raises(TaxcutError, match="budget is 3, but the adaptive grid starts from 4 candidates"):
        run_sweep(SweepSpec.from_yaml(path), progress=False)


def test_the_adaptive_grid_families(llama_pair, tmp_path):
    from taxcut.sweep.strategy import SweepStrategy

    path = write_spec(
        tmp_path,
        llama_pair,
        candidates={
            "strategy": "adaptive",
            "grid": [0.0, 0.3, 1.0],
            "block_patterns": [[0.5, 0.7, 0.9]],
            "layer_patterns": [[0.2, 0.4, 0.6, 0.8]],
            "models": [str(llama_pair[1])],
            "hma": {"data": "fit.jsonl", "mean_alphas": [0.6]},
        },
    )
    strategy = SweepStrategy(SweepSpec.from_yaml(path), book=None, evaluate=None)
    families, fixed = strategy.families()
    assert [f.name for f in families] == ["MA", "blocks [0.5, 0.7, 0.9]", "layers [0.2, 0.4, 0.6, 0.8]", "HMA"]
    assert [f.start_ratios() for f in families] == [[0.0, 0.3, 1.0], [0.0, 0.7, 1.0], [0.0, 0.5, 1.0], [0.0, 0.6, 1.0]]
    ends = [{f.make(0.0).id for f in families}, {f.make(1.0).id for f in families}]
    assert ends == [{strategy.baseline.id}, {families[0].make(1.0).id}]  # every path runs from SFT to aligned
    assert families[1].make(0.7).alphas == [0.5, 0.7, 0.9] and families[1].make(0.35).alphas == [0.25, 0.35, 0.45]
    assert families[2].make(0.25).layer_alphas == [0.1, 0.2, 0.3, 0.4]
    assert [c.kind for c in fixed] == ["model"]  # checkpoints are measured as they are
