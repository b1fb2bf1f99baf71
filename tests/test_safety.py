"""Issue-level promises of the destination policy, command by command: nothing taxcut writes lands on an input,
on a folder or file it did not write, or over another run's result (see taxcut.io.destination)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_sweep import write_sweep

from taxcut.cli import main
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.runner import RESULTS_FILE, export_candidate, run_sweep

TESTS = Path(__file__).parent


def digest(path: Path) -> str:
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(b"".join(digest(p).encode() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()


def test_fit_onto_an_input_is_refused_before_any_work(llama_pair, tmp_path, capsys):
    sft, aligned = llama_pair
    data = tmp_path / "fit.jsonl"
    data.write_text(json.dumps({"prompt": "w4 w5", "response": "w6"}) + "\n")
    for out in (sft / "config.json", data):
        before = digest(out)
        code = main(
            [
                "fit",
                "--sft",
                str(sft),
                "--aligned",
                str(aligned),
                "--data",
                str(data),
                "--alpha",
                "0.5",
                "--blocks",
                "2",
                "--out",
                str(out),
                "--overwrite",
            ]
        )
        assert code == 2 and "write the ratios file somewhere outside the inputs" in capsys.readouterr().err
        assert digest(out) == before


def test_fit_and_sample_never_replace_a_file_they_did_not_write(llama_pair, tmp_path, capsys):
    sft, aligned = llama_pair
    mine = tmp_path / "ratios.yaml"
    mine.write_text("# my notes\n")
    data = tmp_path / "fit.jsonl"
    data.write_text(json.dumps({"prompt": "w4 w5", "response": "w6"}) + "\n")
    assert (
        main(
            [
                "fit",
                "--sft",
                str(sft),
                "--aligned",
                str(aligned),
                "--data",
                str(data),
                "--alpha",
                "0.5",
                "--blocks",
                "2",
                "--out",
                str(mine),
                "--overwrite",
            ]
        )
        == 2
    )
    assert "is a file taxcut did not write" in capsys.readouterr().err and mine.read_text() == "# my notes\n"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "w4"}) + "\n")
    before = digest(prompts)
    assert (
        main(
            [
                "sample",
                "--model",
                str(aligned),
                "--prompts",
                str(prompts),
                "--reward-function",
                f"{TESTS / 'rewards.py'}:first_word_number",
                "--keep",
                "1",
                "--n",
                "1",
                "--out",
                str(prompts),
                "--overwrite",
            ]
        )
        == 2
    )
    assert "outside the inputs" in capsys.readouterr().err and digest(prompts) == before


def test_a_ratios_file_taxcut_wrote_is_replaced_only_with_overwrite(llama_pair, tmp_path, capsys):
    sft, aligned = llama_pair
    data = tmp_path / "fit.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"w{i} w{i + 1}", "response": f"w{i + 2}"}) + "\n" for i in range(4, 12))
    )
    out = tmp_path / "ratios.yaml"
    args = [
        "fit",
        "--sft",
        str(sft),
        "--aligned",
        str(aligned),
        "--data",
        str(data),
        "--alpha",
        "0.5",
        "--blocks",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0 and out.is_file()
    assert main(args) == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize("where", ["spec folder", "model folder"])
def test_a_sweep_cannot_write_into_an_input_or_over_its_spec(llama_pair, tmp_path, capsys, where):
    spec_path = write_sweep(tmp_path, llama_pair, alphas=(0.0,), patterns=())
    spec_text = spec_path.read_text()
    out = tmp_path if where == "spec folder" else llama_pair[1]
    before = digest(llama_pair[1])
    assert main(["sweep", str(spec_path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outside the inputs" in err
    assert spec_path.read_text() == spec_text and digest(llama_pair[1]) == before


def test_select_is_parsed_before_any_work(llama_pair, tmp_path, capsys):
    spec_path = write_sweep(tmp_path, llama_pair, alphas=(0.0,), patterns=())
    assert main(["sweep", str(spec_path), "--select", "tax<<0.1", "--no-progress"]) == 2
    assert "cannot read the selection" in capsys.readouterr().err
    assert not (tmp_path / "sweep-out" / RESULTS_FILE).exists()


def test_export_refuses_results_measured_on_other_weights(llama_pair, tmp_path, capsys):
    import shutil

    sft, aligned = (Path(shutil.copytree(p, tmp_path / "models" / p.name)) for p in llama_pair)
    spec_path = write_sweep(tmp_path, (sft, aligned), alphas=(0.0, 0.5), patterns=())
    report = run_sweep(SweepSpec.from_yaml(spec_path), progress=False)
    chosen = next(row for row in report.rows if row.label == "MA a=0.5")
    weights = aligned / "model.safetensors"
    weights.write_bytes((sft / "model.safetensors").read_bytes())  # another checkpoint of the same shapes now
    assert main(["export", str(report.out), "--candidate", chosen.id, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "was measured on other inputs: the aligned model's model.safetensors changed since" in err
    assert "--force" in err and not (tmp_path / "x").exists()


def test_export_with_force_records_it(llama_pair, tmp_path):
    import shutil

    sft, aligned = (Path(shutil.copytree(p, tmp_path / "models" / p.name)) for p in llama_pair)
    spec_path = write_sweep(tmp_path, (sft, aligned), alphas=(0.0, 0.5), patterns=())
    report = run_sweep(SweepSpec.from_yaml(spec_path), progress=False)
    chosen = next(row for row in report.rows if row.label == "MA a=0.5")
    out = export_candidate(report.out, chosen.id, tmp_path / "ok")
    assert json.loads((out / "taxcut_provenance.json").read_text())["exported"]["inputs_verified"] is True
    (aligned / "model.safetensors").touch()  # a new file time alone is no change: content counts
    assert (
        json.loads(
            (export_candidate(report.out, chosen.id, tmp_path / "touched") / "taxcut_provenance.json").read_text()
        )["exported"]["inputs_verified"]
        is True
    )
    (aligned / "generation_config.json").write_text('{"do_sample": true}')  # a file the merge copies changed
    forced = export_candidate(report.out, chosen.id, tmp_path / "forced", force=True)
    exported = json.loads((forced / "taxcut_provenance.json").read_text())["exported"]
    assert exported["inputs_verified"] is False
    assert exported["forced_despite"] == "the aligned model's generation_config.json changed since"


def test_of_two_concurrent_merges_to_one_destination_exactly_one_succeeds(llama_pair, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "taxcut.cli",
        "merge",
        "--sft",
        str(llama_pair[0]),
        "--aligned",
        str(llama_pair[1]),
        "--alpha",
        "0.5",
        "--out",
        str(out),
        "--no-progress",
    ]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(run.wait(), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    loser = next(err for code, err in outcomes if code)
    assert loser.count("\n") == 1 and ("written by another run meanwhile" in loser or "exists" in loser)


def test_a_sweep_keeps_a_user_file_in_its_folder(llama_pair, tmp_path, capsys):
    spec_path = write_sweep(tmp_path, llama_pair, alphas=(0.0,), patterns=())
    out = tmp_path / "sweep-out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    assert main(["sweep", str(spec_path), "--no-progress"]) == 2
    assert "did not write" in capsys.readouterr().err and (out / "notes.md").read_text() == "mine"
    assert yaml.safe_load(spec_path.read_text())["out"] == "sweep-out"


@pytest.mark.parametrize("kind", ["merge", "sweep"])
def test_an_empty_out_in_a_merge_or_sweep_spec_is_refused(llama_pair, tmp_path, capsys, kind):
    if kind == "merge":
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            yaml.safe_dump({"sft": str(llama_pair[0]), "aligned": str(llama_pair[1]), "alpha": 0.5, "out": ""})
        )
        args = ["merge", str(spec), "--overwrite"]
    else:
        spec = write_sweep(tmp_path, llama_pair, alphas=(0.0,), patterns=())
        spec.write_text(spec.read_text().replace("out: sweep-out", "out: ''"))
        args = ["sweep", str(spec), "--no-progress"]
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == 2
    assert "'out' in" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == listing
