"""Reading mergekit configs: mergekit's gradients, filters and precedence, refusals by name, the round trip."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from models import load_weights

from taxcut.cli import main
from taxcut.errors import TaxcutError
from taxcut.spec.mergekit_config import Condition, MergekitConfig, evaluate_setting, layer_t


def _hashes(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()
    }


def _write(tmp_path: Path, config: dict, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_gradients_interpolate_over_layers_as_mergekit_does():
    gradient = [0, 0.5, 0.3, 0.7, 1]
    ts = [layer_t(i, 4) for i in range(4)]
    assert ts == [0, 1 / 3, 2 / 3, 1] and layer_t(None, 4) == 0 and layer_t(0, 1) == 1
    values = [evaluate_setting("x", gradient, t, float) for t in ts]
    # t * 4 = 4/3: between v1 and v2, a third of the way; 8/3: between v2 and v3, two thirds of the way
    assert values == pytest.approx([0, 0.5 * 2 / 3 + 0.3 / 3, 0.3 / 3 + 0.7 * 2 / 3, 1], abs=1e-15)
    assert evaluate_setting("x", [True, False], 0.6, bool) is True  # booleans pick v[int(t * n)]: v[0]
    assert evaluate_setting("x", [], 0.5, float) is None


def test_filters_match_substrings_in_order_then_fall_through():
    conditions = [Condition(filter="self_attn", value=0.1), Condition(filter="mlp", value=[0.2, 0.4])]
    assert evaluate_setting("model.layers.3.self_attn.q_proj.weight", conditions, 1.0, float) == 0.1
    assert evaluate_setting("model.layers.3.mlp.up_proj.weight", conditions, 0.5, float) == pytest.approx(0.3)
    assert evaluate_setting("model.norm.weight", conditions, 0.5, float) is None  # the next source is asked
    assert evaluate_setting("lm_head.weight", [Condition(filter="*", value=2)], 0, float) == 2.0
    assert evaluate_setting("lm_head.weight", [Condition(filter="lm_head.*", value=2)], 0, float) is None  # no glob


def test_a_models_own_parameters_win_then_top_level(llama_pair, tmp_path):
    sft, aligned = llama_pair
    path = _write(
        tmp_path,
        {
            "merge_method": "linear",
            "parameters": {"weight": 0.25, "normalize": False},
            "models": [
                {"model": str(sft)},
                {"model": str(aligned), "parameters": {"weight": [{"filter": "mlp", "value": [0.0, 1.0]}]}},
            ],
        },
    )
    config = MergekitConfig.from_yaml(path)
    from taxcut.merging.request import request_for

    twin = request_for(config).method
    assert twin.resolved["model.layers.3.mlp.up_proj.weight"]["weight"] == [0.25, 1.0]
    assert twin.resolved["model.layers.1.mlp.up_proj.weight"]["weight"] == pytest.approx([0.25, 1 / 3])
    assert twin.resolved["model.layers.1.self_attn.q_proj.weight"]["weight"] == [0.25, 0.25]  # filter missed
    assert twin.resolved["lm_head.weight"]["normalize"] is False


def test_merge_and_plan_run_a_linear_gradient_config(llama_pair, tmp_path, capsys):
    sft, aligned = llama_pair
    path = _write(
        tmp_path,
        {
            "merge_method": "linear",
            "dtype": "float32",
            "models": [
                {"model": str(sft), "parameters": {"weight": [1.0, 0.0]}},
                {"model": str(aligned), "parameters": {"weight": [0.0, 1.0]}},
            ],
        },
    )
    before = _hashes(sft, aligned, tmp_path)
    assert main(["plan", str(path)]) == 0
    assert "mergekit merge_method linear" in capsys.readouterr().out
    assert main(["merge", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert _hashes(sft, aligned) == {k: v for k, v in before.items() if not k.startswith(str(tmp_path))}
    out, x, y = load_weights(tmp_path / "out"), load_weights(sft), load_weights(aligned)
    name = "model.layers.1.mlp.up_proj.weight"  # layer 1 of 4: t = 1/3, weights 2/3 and 1/3
    expected = x[name].double() * (2 / 3) + y[name].double() / 3
    assert torch.allclose(out[name].double(), expected, atol=1e-6)
    assert torch.equal(out["model.embed_tokens.weight"], x["model.embed_tokens.weight"])  # outside: t = 0
    assert torch.equal(out["model.layers.3.self_attn.q_proj.weight"], y["model.layers.3.self_attn.q_proj.weight"])
    provenance = (tmp_path / "out" / "taxcut_provenance.json").read_text()
    assert '"merge_method": "linear"' in provenance


def test_with_parameter_substitutes_a_scalar_or_gradient(llama_pair, tmp_path):
    sft, aligned = llama_pair
    config = MergekitConfig.from_yaml(
        _write(
            tmp_path,
            {
                "merge_method": "slerp",
                "base_model": str(sft),
                "parameters": {"t": 0.5},
                "models": [{"model": str(sft)}, {"model": str(aligned)}],
            },
        )
    )
    assert config.with_parameter("t", [0.1, 0.9]).parameters == {"t": [0.1, 0.9]}
    assert config.parameters == {"t": 0.5}  # the original is unchanged


@pytest.mark.parametrize(
    "change, message",
    [
        ({"slices": [{"sources": [{"model": "x", "layer_range": [0, 2]}]}]}, "'slices' .*frankenmerges"),
        (
            {"merge_method": "passthrough"},
            "merge_method 'passthrough' is not run by taxcut; it runs .*dare_linear.*"
            "linear.*slerp.*task_arithmetic.*ties",
        ),
        ({"merge_method": "model_averaging"}, "merge_method 'model_averaging' is not run by taxcut"),
        ({"merge_method": "della"}, "merge_method 'della' is not run by taxcut"),
        ({"tokenizer_source": "union"}, "'union' .*is not run by taxcut"),
        ({"tokenizer": {"source": "base"}}, "a 'tokenizer' section"),
        ({"chat_template": "chatml"}, "'chat_template' is not applied"),
        ({"layer_range": [0, 2]}, "field 'layer_range' is not a known field"),
        ({"parameters": {"weight": 1.0, "densty": 0.5}}, "'densty' is not a parameter of mergekit's 'linear'"),
        ({"parameters": {}}, "needs parameter 'weight' for model"),
        ({"parameters": {"weight": "heavy"}}, "parameter 'weight' for tensor"),
        ({"tokenizer_source": "base"}, "'tokenizer_source: base' needs a 'base_model'"),
        ({"dtype": "int8"}, "field 'dtype'"),
    ],
)
def test_refusals_name_the_field_or_method_and_write_nothing(llama_pair, tmp_path, capsys, change, message):
    sft, aligned = llama_pair
    config = {
        "merge_method": "linear",
        "models": [{"model": str(sft)}, {"model": str(aligned)}],
        "parameters": {"weight": 1.0},
        **change,
    }
    path = _write(tmp_path, config)
    before = _hashes(sft, aligned)
    assert main(["merge", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) != 0
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert __import__("re").search(message, error), error
    assert not (tmp_path / "out").exists() and _hashes(sft, aligned) == before


def test_lora_plus_syntax_is_refused(llama_pair, tmp_path):
    with pytest.raises(TaxcutError, match="model\\+lora syntax is not read"):
        MergekitConfig.from_dict({"merge_method": "linear", "models": [{"model": "org/base+org/lora"}]}, tmp_path)


def test_hub_ids_with_revision_stay_as_written(tmp_path):
    config = MergekitConfig.from_dict(
        {
            "merge_method": "slerp",
            "base_model": "org/base@main",
            "models": [{"model": "org/base@main"}, {"model": "org/tuned@v1"}],
        },
        tmp_path,
    )
    assert config.inputs() == ["org/base@main", "org/tuned@v1"]


@pytest.fixture(scope="module")
def deep_bf16_pair(tmp_path_factory):
    """40 bfloat16 layers: from 23 layers on, mergekit's gradient ``t * (n - 1)`` misses some layer indices."""
    from models import write_synthetic_pair

    return write_synthetic_pair(tmp_path_factory.mktemp("deep"), layers=40, elements=999, dtype=torch.bfloat16)


ROUND_TRIPS = {
    "ma": {"alpha": 0.3},
    "hma_rules": {"alphas": [0.2, 0.55, 0.8], "rules": [{"match": "*.mlp.down_proj.weight", "alpha": 0.35}]},
    "profile": {"profile": [0.35, 0.9]},
    "layers_deep_bf16": {"layer_alphas": [round(0.1 + 0.8 * ((7 * i) % 40) / 39, 3) for i in range(40)]},
    "hma_deep_bf16": {"alphas": [0.1 + 0.2, 0.7, 0.9], "dtype": "bfloat16"},
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_export_mergekit_round_trip_gives_the_same_bytes(llama_pair, deep_bf16_pair, tmp_path, capsys, name):
    """A taxcut merge, exported as a mergekit config, read back and merged: the same bytes. (taxcut's averaging
    kernel computes what mergekit's linear computes, and the export gives every tensor its exact float32 weights.)"""
    sft, aligned = deep_bf16_pair if "deep" in name else llama_pair
    spec = _write(tmp_path, {"sft": str(sft), "aligned": str(aligned), **ROUND_TRIPS[name]}, "spec.yaml")
    assert main(["merge", str(spec), "--out", str(tmp_path / "original"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export-mergekit", str(spec)]) == 0
    exported = tmp_path / "exported.yml"
    exported.write_text(capsys.readouterr().out)
    assert main(["merge", str(exported), "--out", str(tmp_path / "back"), "--no-progress"]) == 0
    original, back = load_weights(tmp_path / "original"), load_weights(tmp_path / "back")
    assert set(original) == set(back)
    for tensor_name, tensor in original.items():
        assert back[tensor_name].dtype == tensor.dtype and torch.equal(back[tensor_name], tensor), tensor_name
    files = sorted(p.name for p in (tmp_path / "original").glob("*.safetensors"))
    assert files and files == sorted(p.name for p in (tmp_path / "back").glob("*.safetensors"))
    for file in files:
        assert (tmp_path / "original" / file).read_bytes() == (tmp_path / "back" / file).read_bytes(), file


def test_a_layer_the_gradient_misses_is_exported_by_its_prefix(deep_bf16_pair):
    """Layer 31 of 40: mergekit's t * 39 is 30.999999999999996, so it interpolates layers 30 and 31; a weight on a
    float32 rounding midpoint then rounds the other way, and the export names that layer instead."""
    from taxcut.merging.plan import build_plan
    from taxcut.methods.model_averaging import _gradient_exact, _layer_filter
    from taxcut.spec.merge import MergeSpec

    midpoint = 0.5 + 2.0**-25  # between two float32 values: rounds to 0.5 (even)
    gradient = [(1 - a, a) for a in [0.9] * 31 + [midpoint] + [0.9] * 8]
    assert not _gradient_exact(gradient, midpoint, 31)
    assert _gradient_exact(gradient, 0.9, 30) and _gradient_exact(gradient, 0.9, 25)
    with build_plan(MergeSpec(sft=deep_bf16_pair[0], aligned=deep_bf16_pair[1], alpha=0.5)) as plan:
        assert _layer_filter(plan, 3) == "model.layers.3.mlp."  # its tensors are mlp only; not in layers.13/30


def test_a_mergekit_config_exports_as_itself(llama_pair, tmp_path, capsys):
    sft, aligned = llama_pair
    config = {
        "merge_method": "slerp",
        "base_model": str(sft),
        "dtype": "bfloat16",
        "models": [{"model": str(sft)}, {"model": str(aligned)}],
        "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]},
    }
    assert main(["export-mergekit", str(_write(tmp_path, config))]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == config
