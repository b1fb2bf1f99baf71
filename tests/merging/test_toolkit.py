"""Toolkit specs through the one planner and executor: refusals, the CLI, `taxcut plan`."""

from __future__ import annotations

import json

import pytest
import yaml
from models import run_method_merge

from taxcut import TaxcutError
from taxcut.cli import main
from taxcut.merging.plan import build_plan
from taxcut.spec.toolkit import ToolkitSpec


def test_refusals(trio, tmp_path, pairs):
    base, models = trio
    with pytest.raises(TaxcutError, match="unknown merge method 'tie'; did you mean ties"):
        build_plan(ToolkitSpec(method="tie", models=models))
    with pytest.raises(TaxcutError, match="method 'ties' works on task vectors: give a 'base' model"):
        build_plan(ToolkitSpec(method="ties", models=models))
    with pytest.raises(TaxcutError, match="method 'slerp' takes exactly 2 model"):
        build_plan(ToolkitSpec(method="slerp", models=models))
    spec = ToolkitSpec(method="linear", models=[models[0], pairs["gpt2"][0]], out=tmp_path / "x")
    with pytest.raises(TaxcutError, match="config.json 'model_type' is 'gpt2' but the model 1's is 'llama'"):
        run_method_merge(spec, progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_routes_a_method_spec(trio, tmp_path, capsys):
    base, models = trio
    spec = tmp_path / "ties.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"method": "ties", "base": str(base), "models": [str(m) for m in models], "parameters": {"density": 0.5}}
        )
    )
    assert main(["merge", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    provenance = json.loads((tmp_path / "out" / "taxcut_provenance.json").read_text())
    assert provenance["method"].startswith("ties (Yadav et al. 2023")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_method_specs_refuse_averaging_flags(trio, tmp_path, capsys):
    _, models = trio
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"method": "linear", "models": [str(m) for m in models]}))
    assert main(["merge", str(spec), "--alpha", "0.9", "--out", str(tmp_path / "o")]) == 2
    assert "--alpha apply to averaging an sft/aligned pair" in capsys.readouterr().err


def test_plan_of_a_toolkit_spec(trio, tmp_path, capsys):
    base, models = trio
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "method": "ties",
                "base": str(base),
                "models": [str(m) for m in models],
                "parameters": {"density": [0.2, 0.8], "lambda": 1.0},
            }
        )
    )
    assert main(["plan", str(spec)]) == 0
    text = capsys.readouterr().out
    assert "method   ties: Yadav et al. 2023" in text
    assert "density  layers 0-1: 0.2, layers 2-3: 0.8; embeddings 0.2; after the layers 0.5" in text
    assert "one whole tensor of each input at a time" in text
