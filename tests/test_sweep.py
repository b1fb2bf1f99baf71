"""The sweep: in-memory candidates equal merged folders, resumable results, the front, plot, tables, export."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from killed_sweep import kill_sweep_after
from models import load_weights

from taxcut import MergeSpec, TaxcutError, merge
from taxcut.cli import main
from taxcut.spec.candidates import Candidate, expand_grid, ma_candidate
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.pareto import pareto_front, select, tax
from taxcut.sweep.resident import ResidentModel
from taxcut.sweep.runner import RESULTS_FILE, export_candidate, run_sweep

TESTS = Path(__file__).parent


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
def test_candidate_weights_equal_the_merged_folder(pairs, tmp_path, arch):
    sft, aligned = pairs[arch]
    resident = ResidentModel(sft, aligned)
    candidates = [
        ma_candidate(0.3),
        Candidate(label="b", kind="blocks", alphas=[0.1, 0.6, 0.9], rules=[{"match": "*norm*", "alpha": 0.25}]),
    ]
    for index, candidate in enumerate(candidates):
        resident.apply(candidate)
        merged = load_weights(merge(candidate.merge_spec(sft, aligned, out=tmp_path / f"m{index}")))
        for name, parameter in resident.parameters.items():
            assert torch.equal(parameter.detach(), merged[resident.stored_name[name]]), name
    resident.apply(ma_candidate(0.0))  # back to the SFT weights exactly
    original = load_weights(sft)
    assert all(torch.equal(p.detach(), original[resident.stored_name[n]]) for n, p in resident.parameters.items())


def write_sweep(
    tmp_path: Path,
    pair,
    *,
    function: str = "first_word_number",
    alphas=(0.0, 0.5, 1.0),
    patterns=([0.2, 0.5, 0.8],),
    select_expr: str | None = None,
) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 12)))
    (data / "mc.jsonl").write_text(
        "".join(
            json.dumps({"context": f"w{i}", "choices": [f"w{i + 1}", f"w{i + 7}"], "answer": 0}) + "\n"
            for i in range(4, 20)
        )
    )
    (data / "text.jsonl").write_text(
        "".join(json.dumps({"text": " ".join(f"w{j}" for j in range(i, i + 6))}) + "\n" for i in range(4, 14))
    )
    spec = {
        "sft": str(pair[0]),
        "aligned": str(pair[1]),
        "out": "sweep-out",
        "candidates": {"grid": list(alphas), "block_patterns": [list(p) for p in patterns]},
        "evaluation": {
            "reward": {
                "prompts": "data/prompts.jsonl",
                "function": f"{TESTS / 'rewards.py'}:{function}",
                "max_new_tokens": 3,
            },
            "tasks": [
                {"name": "mc", "type": "multiple_choice", "path": "data/mc.jsonl"},
                {"name": "text", "type": "perplexity", "path": "data/text.jsonl"},
            ],
        },
    }
    if select_expr:
        spec["select"] = select_expr
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_end_to_end(llama_pair, tmp_path, capsys):
    spec_path = write_sweep(tmp_path, llama_pair, select_expr="tax<=1000")
    assert main(["sweep", str(spec_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "sweep-out"
    records = [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]
    assert [r["label"] for r in records] == ["MA a=0", "MA a=0.5", "MA a=1", "blocks [0.2, 0.5, 0.8]"]
    assert "selected under 'tax<=1000'" in printed and "Pareto front:" in printed
    spec = SweepSpec.from_yaml(spec_path)
    report = run_sweep(spec, progress=False)  # everything is in the results file: nothing is evaluated again
    assert len((out / RESULTS_FILE).read_text().splitlines()) == 4
    rows = {row.label: row for row in report.rows}
    assert rows["MA a=0"].tax == 0.0
    baseline = records[0]
    aligned = records[2]
    assert rows["MA a=1"].tax == pytest.approx(tax(aligned["primary"], baseline["primary"], aligned["directions"]))
    assert rows["MA a=1"].reward == aligned["reward"]["reward"]
    assert [r.pareto for r in report.rows] == pareto_front([(r.reward, r.tax) for r in report.rows])
    png = (out / "front.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    assert matplotlib.image.imread(out / "front.png").shape[2] in (3, 4)
    csv_lines = (out / "candidates.csv").read_text().splitlines()
    assert csv_lines[0].startswith(
        "id,label,mean_alpha,reward,reward_stderr,tax,tax_stderr,pareto,pareto_within_noise,mc.acc"
    )
    assert len(csv_lines) == 5
    assert "| MA a=0.5 |" in (out / "candidates.md").read_text()

    # export: the merged folder of the candidate, identical to a direct merge of the same ratios
    block_id = rows["blocks [0.2, 0.5, 0.8]"].id
    exported = export_candidate(out, block_id[:6], tmp_path / "exported")
    direct = merge(MergeSpec(sft=llama_pair[0], aligned=llama_pair[1], alphas=[0.2, 0.5, 0.8], out=tmp_path / "d"))
    assert load_weights(exported).keys() == load_weights(direct).keys()
    assert all(torch.equal(a, load_weights(direct)[k]) for k, a in load_weights(exported).items())


def test_resume_after_sigkill_loses_nothing_and_redoes_nothing(llama_pair, tmp_path):
    spec_path = write_sweep(
        tmp_path,
        llama_pair,
        function="slow_first_word_number",
        alphas=[round(0.1 * i, 1) for i in range(11)],
        patterns=(),
    )
    results = tmp_path / "sweep-out" / RESULTS_FILE
    before = kill_sweep_after(spec_path, results, lines=3, timeout=180)
    finished = [json.loads(line)["candidate_id"] for line in before.decode().splitlines() if line.endswith("}")]
    assert 3 <= len(finished) < 11

    run_sweep(SweepSpec.from_yaml(spec_path), progress=False)
    after = results.read_bytes()
    assert after.startswith(before)  # nothing already written is lost or rewritten
    ids = [json.loads(line)["candidate_id"] for line in after.decode().splitlines() if line.endswith("}")]
    assert sorted(ids) == sorted(c.id for c in expand_grid(SweepSpec.from_yaml(spec_path).candidates))
    assert len(ids) == len(set(ids))  # nothing finished was evaluated again


def result_record(alpha: float):
    """A results-file record of a made-up evaluation of MA at ``alpha``."""
    from taxcut.evaluation.result import EvaluationResult
    from taxcut.sweep.results import ResultRecord

    result = EvaluationResult(tasks={"mc": {"acc": 0.5}}, primary={"mc": 0.5}, directions={"mc": True}, seconds=1.0)
    candidate = ma_candidate(alpha)
    return ResultRecord(
        candidate_id=candidate.id, candidate=candidate, result=result, mean_alpha=alpha, sft="sft", aligned="aligned"
    )


def test_a_cut_short_line_is_kept_and_skipped(tmp_path):
    from taxcut.sweep.results import ResultsStore

    store = ResultsStore(tmp_path / "r.jsonl")
    store.append(result_record(0.1))
    with open(tmp_path / "r.jsonl", "a") as handle:
        handle.write('{"candidate_id": "b", "x"')  # a kill in the middle of a write
    store.append(result_record(0.3))
    assert [r.candidate_id for r in store.records()] == [ma_candidate(0.1).id, ma_candidate(0.3).id]
    assert '{"candidate_id": "b", "x"\n' in (tmp_path / "r.jsonl").read_text()


def test_pareto_front_of_hand_made_points():
    points = [(0.0, 0.0), (1.0, 0.5), (0.5, 0.2), (0.4, 0.3), (1.0, 0.6), (0.9, 0.1), (1.2, 0.9)]
    assert pareto_front(points) == [True, True, False, False, False, True, True]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [True, True]  # equal points do not dominate each other


def test_selection_under_a_budget():
    rows = [
        SimpleNamespace(id="a", reward=0.0, tax=0.0),
        SimpleNamespace(id="b", reward=0.9, tax=0.1),
        SimpleNamespace(id="c", reward=1.2, tax=0.9),
        SimpleNamespace(id="d", reward=0.95, tax=0.25),
    ]
    assert select(rows, "tax<=0.2").id == "b"
    assert select(rows, "tax <= 0.3").id == "d"
    assert select(rows, "reward>=0.9").id == "b"  # only a reward floor: the lowest tax above it
    assert select(rows, "reward>=0.9, tax<0.05") is None
    with pytest.raises(TaxcutError, match="cannot read the selection 'accuracy>3'"):
        select(rows, "accuracy>3")


def test_tax_directions():
    baseline, candidate = {"acc": 0.8, "nll": 1.0}, {"acc": 0.6, "nll": 1.5}
    assert tax(candidate, baseline, {"acc": True, "nll": False}) == pytest.approx((0.2 + 0.5) / 2)


def test_sweep_spec_errors(llama_pair, tmp_path):
    path = write_sweep(tmp_path, llama_pair)
    data = yaml.safe_load(path.read_text())
    data["candidates"]["grid"] = [0.5, 1.5]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TaxcutError, match=r"candidate MA a=1.5: 'alpha' = 1.5 is outside \[0, 1\]"):
        SweepSpec.from_yaml(path)
    data["candidates"]["grid"] = [0.5]
    data["evaluation"].pop("tasks")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TaxcutError, match="a sweep measures reward and tax"):
        SweepSpec.from_yaml(path)


def test_missing_prompts_file_fails_before_any_model_loads(llama_pair, tmp_path, capsys):
    path = write_sweep(tmp_path, llama_pair)
    (tmp_path / "data" / "prompts.jsonl").unlink()
    assert main(["sweep", str(path), "--no-progress"]) == 2
    assert "prompts.jsonl: prompts file not found" in capsys.readouterr().err
    assert not (tmp_path / "sweep-out").exists()


def test_export_of_an_unknown_candidate(llama_pair, tmp_path, capsys):
    path = write_sweep(tmp_path, llama_pair, alphas=[0.0], patterns=())
    run_sweep(SweepSpec.from_yaml(path), progress=False)
    assert main(["export", str(tmp_path / "sweep-out"), "--candidate", "zzz", "--out", str(tmp_path / "x")]) == 2
    assert "no candidate with id 'zzz'" in capsys.readouterr().err


def test_eval_command_on_a_folder(llama_pair, tmp_path, capsys):
    path = write_sweep(tmp_path, llama_pair)
    assert main(["eval", str(llama_pair[0]), str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["tasks"]) == {"mc", "text"} and "reward" in result


def test_a_bad_candidate_fails_before_any_evaluation(llama_pair, tmp_path, capsys):
    path = write_sweep(tmp_path, llama_pair, patterns=([0.1, 0.2, 0.3, 0.4, 0.5],))  # 5 blocks, 4 layers
    assert main(["sweep", str(path), "--no-progress"]) == 2
    assert "'alphas' asks for 5 blocks but the model has only 4 decoder layers" in capsys.readouterr().err
    assert not (tmp_path / "sweep-out" / RESULTS_FILE).exists()


def test_model_candidates_are_evaluated_as_they_are(llama_pair, tmp_path):
    resident = ResidentModel(*llama_pair)
    candidate = Candidate(label="aligned", kind="model", model=str(llama_pair[1]))
    resident.apply(candidate)
    aligned = load_weights(llama_pair[1])
    assert all(torch.equal(p.detach(), aligned[resident.stored_name[n]]) for n, p in resident.parameters.items())
    assert candidate.mean_alpha is None
    with pytest.raises(TaxcutError, match="is the model folder .* itself; there is nothing to merge"):
        candidate.merge_spec(*llama_pair)


def test_results_follow_the_models_not_the_paths(llama_pair, tmp_path, monkeypatch):
    import shutil

    from taxcut.evaluation.suite import EvaluationSuite
    from taxcut.sweep.runner import sweep_context

    path = write_sweep(tmp_path, llama_pair)
    spec = SweepSpec.from_yaml(path)
    context = sweep_context(spec, EvaluationSuite.from_spec(spec.evaluation))
    monkeypatch.chdir(tmp_path)
    relative = SweepSpec.from_yaml(Path("sweep.yaml"))  # the same spec reached another way: the same results
    assert sweep_context(relative, EvaluationSuite.from_spec(relative.evaluation)) == context
    other = tmp_path / "other-aligned"
    shutil.copytree(llama_pair[1], other)  # same architecture and headers, other weights
    tensors = load_weights(other)
    tensors["model.norm.weight"] += 1
    from safetensors.torch import save_file

    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    changed = spec.model_copy(update={"aligned": other})
    assert sweep_context(changed, EvaluationSuite.from_spec(changed.evaluation)) != context


def test_resident_in_another_dtype_equals_the_merge_in_that_dtype(llama_pair, tmp_path):
    resident = ResidentModel(*llama_pair, dtype="bfloat16")
    candidate = Candidate(label="b", kind="blocks", alphas=[0.1, 0.6, 0.9])
    resident.apply(candidate)
    spec = candidate.merge_spec(*llama_pair, out=tmp_path / "m").model_copy(update={"dtype": "bfloat16"})
    merged = load_weights(merge(spec))
    assert all(torch.equal(p.detach(), merged[resident.stored_name[n]]) for n, p in resident.parameters.items())


def test_generation_config_comes_from_the_aligned_model(llama_pair, tmp_path):
    import shutil

    aligned = Path(shutil.copytree(llama_pair[1], tmp_path / "aligned"))
    config = json.loads((aligned / "generation_config.json").read_text())
    config["eos_token_id"] = [2, 7]
    (aligned / "generation_config.json").write_text(json.dumps(config))
    assert ResidentModel(llama_pair[0], aligned).model.generation_config.eos_token_id == [2, 7]


def test_the_baseline_is_the_sft_model_even_with_grid_rules():
    from taxcut.spec.candidates import CandidateGrid

    candidates = expand_grid(CandidateGrid(grid=[0.5], rules=[{"match": "lm_head.*", "alpha": 1.0}]))
    assert candidates[0].alpha == 0.0 and candidates[0].rules == []
    assert candidates[1].rules and candidates[1].alpha == 0.5


def test_non_finite_points_are_never_on_the_front():
    nan = float("nan")
    assert pareto_front([(nan, 0.0), (1.0, 0.5), (0.5, 0.1)]) == [False, True, True]
    rows = [SimpleNamespace(id="n", reward=nan, tax=0.0), SimpleNamespace(id="ok", reward=2.0, tax=0.4)]
    assert select(rows, "tax<=0.5").id == "ok"


def test_a_setting_left_at_its_default_does_not_change_the_context_and_a_changed_one_does(llama_pair, tmp_path, capsys):
    from taxcut.evaluation.suite import EvaluationSuite
    from taxcut.sweep.runner import sweep_context

    spec = SweepSpec.from_yaml(write_sweep(tmp_path, llama_pair))
    context = sweep_context(spec, EvaluationSuite.from_spec(spec.evaluation))
    reward = spec.evaluation.reward
    # every setting written out, at its default (as a spec written before a setting existed differs from one after)
    written = type(reward).model_validate(reward.model_dump(mode="json"))
    assert written.model_fields_set > reward.model_fields_set
    spelled_out = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"reward": written})})
    assert sweep_context(spelled_out, EvaluationSuite.from_spec(spelled_out.evaluation)) == context
    more = spec.model_copy(
        update={
            "evaluation": spec.evaluation.model_copy(
                update={"reward": reward.model_copy(update={"samples_per_prompt": reward.samples_per_prompt + 1})}
            )
        }
    )
    assert sweep_context(more, EvaluationSuite.from_spec(more.evaluation)) != context
    # a sweep whose results were measured under other settings says so, and measures again
    spec = spec.model_copy(
        update={"candidates": spec.candidates.model_copy(update={"grid": [0.0, 1.0], "block_patterns": []})}
    )
    run_sweep(spec, progress=False)
    capsys.readouterr()
    run_sweep(more.model_copy(update={"candidates": spec.candidates}), progress=False)
    assert "holds 2 result(s) measured under other settings" in capsys.readouterr().err
