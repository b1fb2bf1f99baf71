"""`taxcut export-mergekit`."""

from __future__ import annotations

import yaml

from taxcut.cli import main


def test_export_mergekit_per_layer_and_outside(llama_pair, tmp_path, capsys):
    spec = tmp_path / "hma.yaml"
    spec.write_text(f"sft: {llama_pair[0]}\naligned: {llama_pair[1]}\nalphas: [0.2, 0.5, 0.8]\n")
    assert main(["export-mergekit", str(spec)]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    sft, aligned = config["models"]
    assert config["merge_method"] == "linear" and config["parameters"] == {"normalize": False}
    assert aligned["parameters"]["weight"][-1] == {"value": [0.2, 0.5, 0.5, 0.8]}  # one value per layer
    outside = {e["filter"]: e["value"] for e in aligned["parameters"]["weight"][:-1]}
    assert outside == {"model.embed_tokens": 0.2, "model.norm": 0.5, "lm_head": 0.5}  # not the list's first value
    assert sft["parameters"]["weight"][-1] == {"value": [0.8, 0.5, 0.5, 0.2]}
    toolkit = tmp_path / "ties.yaml"
    toolkit.write_text(
        yaml.safe_dump(
            {
                "method": "ties",
                "base": str(llama_pair[0]),
                "models": [str(llama_pair[1])],
                "parameters": {"density": 0.3, "lambda": 0.9},
            }
        )
    )
    assert main(["export-mergekit", str(toolkit)]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["merge_method"] == "ties" and config["parameters"] == {"lambda": 0.9}
    assert config["models"][0]["parameters"] == {"weight": 1.0, "density": 0.3}


def test_export_mergekit_refuses_what_mergekit_computes_differently(trio, tmp_path, capsys):
    base, models = trio
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"method": "ties", "base": str(base), "models": [{"path": str(models[0]), "weight": 2.0}, str(models[1])]}
        )
    )
    assert main(["export-mergekit", str(spec)]) == 2
    assert "weighted ties" in capsys.readouterr().err
