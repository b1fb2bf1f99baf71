from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from models import load_weights

from taxcut.cli import main


def test_plan_prints_blocks_and_groups(llama_pair, capsys):
    assert (
        main(
            [
                "plan",
                "--sft",
                str(llama_pair[0]),
                "--aligned",
                str(llama_pair[1]),
                "--alphas",
                "0.2,0.4,0.9",
                "--rule",
                "lm_head.*=0.7",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "4 decoder layers" in text
    assert "a weighs the ALIGNED model" in text
    lines = {
        line.split()[0] + " " + line.split()[1]: line.split()
        for line in text.splitlines()
        if line.startswith(("block", "rule", "embeddings", "outside"))
    }
    assert lines["block 1"][-3:] == ["0.2", "9", "9,280"]
    assert lines["block 3"][-3:-1] == ["0.9", "9"]
    assert lines["rule 1"][-3] == "0.7"
    assert "model.embed_tokens.weight" in text and "lm_head.weight" in text


def test_flags_override_the_spec_file(llama_pair, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"sft: {llama_pair[0]}\naligned: {llama_pair[1]}\nalphas: [0.1, 0.9]\nout: {tmp_path / 'a'}\n")
    assert main(["plan", str(spec), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [b["alpha"] for b in summary["blocks"]] == [0.1, 0.9]
    assert main(["plan", str(spec), "--alpha", "0.25", "--json"]) == 0  # --alpha replaces the file's alphas
    summary = json.loads(capsys.readouterr().out)
    assert summary["blocks"] == [{"first": 0, "last": 3, "alpha": 0.25}]
    assert (
        main(["merge", str(spec), "--layer-alphas", "0,0.5,0.5,1", "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    )
    assert not (tmp_path / "a").exists() and (tmp_path / "b" / "model.safetensors").is_file()
    merged, sft = load_weights(tmp_path / "b"), load_weights(llama_pair[0])
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], sft["model.layers.0.mlp.up_proj.weight"])


def test_relative_paths_in_a_spec_are_relative_to_it(llama_pair, tmp_path, capsys, monkeypatch):
    import shutil

    for folder in llama_pair:
        shutil.copytree(folder, tmp_path / "models" / folder.name)
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "ma.yaml"
    spec.write_text(
        f"sft: ../models/{llama_pair[0].name}\naligned: ../models/{llama_pair[1].name}\nalpha: 0.5\nout: ../merged\n"
    )
    monkeypatch.chdir(tmp_path / "models")
    assert main(["merge", str(spec), "--no-progress"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_missing_model_flag(capsys):
    assert main(["plan", "--aligned", "x", "--alpha", "0.5"]) == 2
    assert "no sft model: pass --sft DIR or set 'sft:' in a spec file" in capsys.readouterr().err


def test_bad_flag_values_are_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["merge", "--alphas", "0.1,x"])
    assert caught.value.code == 2
    assert "expected numbers separated by commas" in capsys.readouterr().err


def test_console_script_runs(llama_pair):
    result = subprocess.run([sys.executable, "-m", "taxcut.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("taxcut ")
