"""The one planner: inputs with roles, compatibility checks for every method, per-tensor parameters."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from models import load_weights
from safetensors.torch import save_file

from taxcut import MergeSpec, TaxcutError
from taxcut.cli import main
from taxcut.merging.plan import build_plan
from taxcut.spec.toolkit import ToolkitSpec


def untied_copy(tied, folder):
    """A fine-tune of a tied model saved with its own (untied) head: config says untied, lm_head stored."""
    shutil.copytree(tied, folder)
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config))
    tensors = load_weights(folder)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone() + 0.5
    (folder / "model.safetensors").unlink()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("order", ["tied first", "untied first"])
def test_toolkit_refuses_a_tied_and_an_untied_model(pairs, tmp_path, order):
    tied = pairs["qwen2"][0]
    untied = untied_copy(tied, tmp_path / "untied")
    models = [tied, untied] if order == "tied first" else [untied, tied]
    spec = ToolkitSpec(method="linear", models=models, out=tmp_path / "out")
    with pytest.raises(TaxcutError, match="config.json 'tie_word_embeddings' is .* all models must tie"):
        build_plan(spec)
    assert not (tmp_path / "out").exists()


def test_toolkit_bad_shard_size_is_a_field_error(llama_pair, tmp_path, capsys):
    spec = tmp_path / "soup.yaml"
    spec.write_text(
        yaml.safe_dump({"method": "linear", "models": [str(p) for p in llama_pair], "max_shard_size": "lots"})
    )
    assert main(["merge", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'max_shard_size' cannot read 'lots' as a size" in err
    assert main(["merge", str(spec), "--out", str(tmp_path / "out"), "--max-shard-size=-3MB"]) == 2
    assert "field 'max_shard_size'" in capsys.readouterr().err


def test_model_averaging_is_the_two_input_case_of_the_toolkit(llama_pair, tmp_path):
    """The same merge through a merge spec and through a toolkit spec naming the averaging method's parameters:
    one planner, one executor, the same bytes."""
    sft, aligned = llama_pair
    from taxcut import merge

    merge(MergeSpec(sft=sft, aligned=aligned, alphas=[0.2, 0.7], out=tmp_path / "spec"), progress=False)
    averaging = build_plan(MergeSpec(sft=sft, aligned=aligned, alpha=0.5)).method.name
    toolkit = ToolkitSpec(
        method=averaging, models=[sft, aligned], parameters={"alphas": [0.2, 0.7]}, out=tmp_path / "toolkit"
    )
    merge(toolkit, progress=False)
    left, right = load_weights(tmp_path / "spec"), load_weights(tmp_path / "toolkit")
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_per_tensor_parameters_and_sites(llama_pair):
    base, model = llama_pair
    spec = ToolkitSpec(method="ties", base=base, models=[model], parameters={"density": [0.2, 0.8]})
    with build_plan(spec) as plan:
        by_name = {t.name: t for t in plan.tensors}
        assert [t.role for t in plan.request.inputs] == ["base", "model 1"]
        assert by_name["model.layers.0.mlp.up_proj.weight"].parameters.density == 0.2
        assert by_name["model.layers.3.mlp.up_proj.weight"].parameters.density == 0.8
        assert by_name["model.layers.3.mlp.up_proj.weight"].site.layer == 3
        assert by_name["model.embed_tokens.weight"].parameters.density == 0.2
        assert by_name["lm_head.weight"].parameters.density == pytest.approx(0.5)
        assert by_name["lm_head.weight"].site.layer is None
        assert plan.request.parameters.density == [0.2, 0.8]  # the request keeps the lists


def test_unknown_parameter_is_named(llama_pair, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "method": "ties",
                "base": str(llama_pair[0]),
                "models": [str(llama_pair[1])],
                "parameters": {"densty": 0.5},
            }
        )
    )
    assert main(["plan", str(spec)]) == 2
    assert "method 'ties': parameter 'densty' is not a parameter of this method" in capsys.readouterr().err


def test_merge_prints_the_plans_notes(llama_pair, tmp_path, capsys):
    sft, aligned = llama_pair
    assert (
        main(
            [
                "merge",
                "--sft",
                str(sft),
                "--aligned",
                str(aligned),
                "--alpha",
                "0.5",
                "--rule",
                "nothing.*=0.1",
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "note: rule(s) 1 match no tensor" in capsys.readouterr().err
