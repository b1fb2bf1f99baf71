"""Parity with mergekit 0.1.5: the same config merged by mergekit's `mergekit-yaml` (from its own venv,
`.venv-parity`, built by `make parity-env`) and by taxcut gives the same weights.

DARE's random drop is compared where it is deterministic (density 1, with rescale): mergekit draws every mask from
one global torch stream in its scheduler's order, taxcut seeds each tensor and input on its own so a merge is
reproducible in any order; the masks themselves cannot be equal.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from models import build_pair, load_weights

from taxcut.cli import main

MERGEKIT = Path(__file__).resolve().parents[2] / ".venv-parity" / "bin" / "mergekit-yaml"
pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(
        not MERGEKIT.exists(), reason=f"mergekit 0.1.5 is not installed at {MERGEKIT}: run `make parity-env`"
    ),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An untied float32 Llama trio (base + two fine-tunes) and a tied bfloat16 Qwen2 pair."""
    root = tmp_path_factory.mktemp("parity")
    base, first = build_pair(root / "a", "llama", seed=0)
    _, second = build_pair(root / "b", "llama", seed=0)
    tensors = load_weights(second)
    generator = torch.Generator().manual_seed(3)
    from safetensors.torch import save_file

    save_file(
        {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in tensors.items()},
        second / "model.safetensors",
        metadata={"format": "pt"},
    )
    tied = build_pair(root / "q", "qwen2", dtype=torch.bfloat16, seed=1)
    return {
        "base": str(base),
        "first": str(first),
        "second": str(second),
        "qbase": str(tied[0]),
        "qtuned": str(tied[1]),
    }


GRADIENT_T = [
    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
    {"value": 0.5},
]
CONFIGS = {
    "linear": lambda m: {
        "merge_method": "linear",
        "dtype": "float32",
        "models": [
            {"model": m["first"], "parameters": {"weight": [1.0, 0.2]}},
            {
                "model": m["second"],
                "parameters": {"weight": [{"filter": "embed_tokens", "value": 0.7}, {"value": 0.5}]},
            },
        ],
    },
    "linear_tied_bf16": lambda m: {
        "merge_method": "linear",
        "parameters": {"weight": 1.0, "normalize": True},
        "models": [{"model": m["qbase"]}, {"model": m["qtuned"], "parameters": {"weight": [0.2, 0.9]}}],
    },
    "task_arithmetic": lambda m: {
        "merge_method": "task_arithmetic",
        "base_model": m["base"],
        "dtype": "bfloat16",
        "out_dtype": "float32",
        "parameters": {"lambda": 0.8},
        "models": [
            {"model": m["first"], "parameters": {"weight": [0.3, 1.0]}},
            {"model": m["second"], "parameters": {"weight": 0.5}},
        ],
    },
    "ties": lambda m: {
        "merge_method": "ties",
        "base_model": m["base"],
        "dtype": "float32",
        "parameters": {"lambda": 0.9, "int8_mask": True},
        "models": [
            {
                "model": m["first"],
                "parameters": {"weight": [0.2, 0.8], "density": [{"filter": "mlp", "value": 0.5}, {"value": 0.7}]},
            },
            {"model": m["second"], "parameters": {"weight": 0.6, "density": 0.4}},
        ],
    },
    "ties_bf16": lambda m: {
        "merge_method": "ties",
        "base_model": m["base"],
        "dtype": "bfloat16",
        "parameters": {"normalize": False, "density": [0.3, 0.9], "weight": 1.0},
        "models": [{"model": m["first"]}, {"model": m["second"]}],
    },
    "dare_ties": lambda m: {
        "merge_method": "dare_ties",
        "base_model": m["base"],
        "dtype": "float32",
        "parameters": {"density": 1.0, "normalize": True},
        "models": [
            {"model": m["first"], "parameters": {"weight": [0.7, 0.1]}},
            {"model": m["second"], "parameters": {"weight": 0.4}},
        ],
    },
    "dare_linear": lambda m: {
        "merge_method": "dare_linear",
        "base_model": m["base"],
        "dtype": "bfloat16",
        "parameters": {"weight": 0.5, "lambda": 1.5},
        "models": [{"model": m["first"]}, {"model": m["second"], "parameters": {"density": 1.0}}],
    },
    "slerp_gradient_bf16_tied": lambda m: {
        "merge_method": "slerp",
        "base_model": m["qbase"],
        "dtype": "bfloat16",
        "parameters": {"t": GRADIENT_T},
        "models": [{"model": m["qbase"]}, {"model": m["qtuned"]}],
    },
    "slerp_fp32": lambda m: {
        "merge_method": "slerp",
        "base_model": m["first"],
        "parameters": {"t": [0.1, 0.9]},
        "models": [{"model": m["first"]}, {"model": m["second"]}],
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_taxcut_equals_mergekit(models, tmp_path, name):
    config = tmp_path / f"{name}.yml"
    config.write_text(yaml.safe_dump(CONFIGS[name](models), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    done = subprocess.run(
        [str(MERGEKIT), str(config), str(tmp_path / "mergekit")],
        capture_output=True,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(["merge", str(config), "--out", str(tmp_path / "taxcut"), "--no-progress"]) == 0
    theirs, ours = load_weights(tmp_path / "mergekit"), load_weights(tmp_path / "taxcut")
    assert set(ours) <= set(theirs) and len(ours) >= len(theirs) - 1  # a tied head: written once by taxcut
    for tensor_name, tensor in ours.items():
        assert tensor.dtype == theirs[tensor_name].dtype, tensor_name
        difference = (tensor.double() - theirs[tensor_name].double()).abs().max().item()
        assert difference <= 1e-6, f"{tensor_name}: {difference}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "pair, ratios",
    [
        ("llama", {"alphas": [0.2, 0.55, 0.8], "rules": [{"match": "*.mlp.down_proj.weight", "alpha": 0.35}]}),
        ("qwen2_bf16_tied", {"profile": [0.3, 0.6]}),
    ],
)
def test_mergekit_runs_the_exported_config_to_the_same_bytes(models, tmp_path, capsys, pair, ratios):
    """taxcut's MA/HMA kernel is mergekit's linear arithmetic: the config `export-mergekit` writes, run by mergekit
    itself, gives every tensor of the taxcut merge bit for bit (fp32 and bf16)."""
    sft, aligned = (models["base"], models["first"]) if pair == "llama" else (models["qbase"], models["qtuned"])
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"sft": sft, "aligned": aligned, **ratios}))
    assert main(["merge", str(spec), "--out", str(tmp_path / "taxcut"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export-mergekit", str(spec)]) == 0
    config = tmp_path / "exported.yml"
    config.write_text(capsys.readouterr().out)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    done = subprocess.run(
        [str(MERGEKIT), str(config), str(tmp_path / "mergekit")],
        capture_output=True,
        text=True,
        env={**env, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs, ours = load_weights(tmp_path / "mergekit"), load_weights(tmp_path / "taxcut")
    assert set(ours) <= set(theirs)
    for tensor_name, tensor in ours.items():
        assert tensor.dtype == theirs[tensor_name].dtype, tensor_name
        assert torch.equal(
            tensor.view(torch.int16 if tensor.itemsize == 2 else torch.int32),
            theirs[tensor_name].view(torch.int16 if tensor.itemsize == 2 else torch.int32),
        ), tensor_name
