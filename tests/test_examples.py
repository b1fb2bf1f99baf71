"""The example specs cannot rot: each file of examples/specs is copied beside tiny models of the names it uses and
loaded and planned as a user would (`taxcut plan` for merges; a sweep's spec loaded and its candidates expanded and
planned); a spec file no test covers fails the suite."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from models import build_pair, load_weights

from taxcut.cli import main
from taxcut.spec.candidates import expand_grid, from_ratios_file
from taxcut.spec.sweep import SweepSpec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "specs"
# the model folders the examples name (relative to the spec): an SFT/aligned pair, a checkpoint of the RLHF run, and
# a base model with two fine-tunes for the toolkit's methods, all one tiny 4-layer Llama plus noise
MODELS = ("sft", "aligned", "aligned-step-400", "base", "ft-math", "ft-code")
MERGES = (
    "merge.yaml",
    "ratios.yaml",
    "toolkit-task-arithmetic.yaml",
    "toolkit-ties.yaml",
    "toolkit-slerp.yaml",
    "mergekit-slerp.yaml",
)
SWEEPS = ("sweep.yaml", "sweep-adaptive.yaml", "sweep-ray.yaml")


def _noisy_copy(source: Path, target: Path, seed: int) -> None:
    """``source``'s weights plus seeded noise, with its config and tokenizer files."""
    from safetensors.torch import save_file

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    tensors = {k: v + 0.02 * torch.randn(v.shape, generator=generator) for k, v in load_weights(source).items()}
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def example_models(tmp_path_factory) -> Path:
    """A ``models`` folder holding every model the examples name."""
    root = tmp_path_factory.mktemp("example-models")
    sft, aligned = build_pair(root / "pair", "llama")
    models = root / "models"
    shutil.copytree(sft, models / "sft")
    shutil.copytree(aligned, models / "aligned")
    for seed, name in enumerate(MODELS[2:], start=1):
        _noisy_copy(models / ("aligned" if name.startswith("aligned") else "sft"), models / name, seed)
    return models


@pytest.fixture
def examples(example_models, tmp_path) -> Path:
    """examples/specs copied into ``tmp_path`` with the models beside it."""
    folder = tmp_path / "specs"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(example_models, folder / "models")
    return folder


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def _plan(spec: Path, capsys) -> tuple[dict, str]:
    """``taxcut plan SPEC --json`` as plain data, and ``taxcut plan SPEC`` as printed."""
    printed = []
    for flags in (["--json"], []):
        capsys.readouterr()
        assert main(["plan", str(spec), *flags]) == 0, capsys.readouterr().err
        printed.append(capsys.readouterr().out)
    return json.loads(printed[0]), printed[1]


def _group(plan: dict, tensor: str) -> float:
    """The value the plan gives ``tensor``."""
    return next(g["alpha"] for g in plan["groups"] if tensor in g["tensors"])


def test_every_example_spec_is_covered():
    found = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml")}
    covered = set(MERGES) | set(SWEEPS)
    assert found == covered, (
        f"examples/specs without a test: {sorted(found - covered)}; "
        f"tested but gone: {sorted(covered - found)} (add them to MERGES or SWEEPS)"
    )


@pytest.mark.parametrize("name", MERGES)
def test_a_merge_example_plans(name, examples, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the spec's folder: its relative paths must be read from the file
    before = _digest(examples)
    plan, printed = _plan(examples / name, capsys)
    assert plan["decoder_layers"] == 4
    assert all(Path(i["path"]).is_relative_to(examples / "models") for i in plan["inputs"])
    EXPECTED_PLAN[name](plan, printed)
    assert _digest(examples) == before  # planning reads headers only: the spec and the models are unchanged
    assert not (examples / "merged").exists()


def _merge(plan: dict, printed: str) -> None:
    assert plan["method"] == "model_averaging"
    assert [(b["first"], b["last"], b["alpha"]) for b in plan["blocks"]] == [(0, 0, 0.3), (1, 2, 0.5), (3, 3, 0.7)]
    assert _group(plan, "lm_head.weight") == 0.6
    assert _group(plan, "model.layers.2.mlp.up_proj.weight") == 0.5


def _ratios(plan: dict, printed: str) -> None:
    assert plan["method"] == "model_averaging"
    assert [b["alpha"] for b in plan["blocks"]] == [0.42, 0.54, 0.54]
    assert _group(plan, "model.norm.weight") == 0.5


def _toolkit(method: str, inputs: int):
    def check(plan: dict, printed: str) -> None:
        assert plan["method"] == method
        assert len(plan["inputs"]) == inputs

    return check


def _mergekit(plan: dict, printed: str) -> None:
    assert plan["method"] == "slerp"
    # mergekit's gradient [0, 0.5, 0.3, 0.7, 1] over 4 layers: t = i / 3 at layer i (layer 1: s = 4/3, so
    # 2/3 * 0.5 + 1/3 * 0.3); the filters are substrings, the last condition catches the rest
    for line in (
        "model.layers.0.self_attn.k_proj.weight .. model.layers.0.self_attn.v_proj.weight: t=0\n",
        "model.layers.1.self_attn.k_proj.weight .. model.layers.1.self_attn.v_proj.weight: t=0.433333\n",
        "model.layers.3.self_attn.k_proj.weight .. model.layers.3.self_attn.v_proj.weight: t=1\n",
        "model.layers.0.mlp.down_proj.weight .. model.layers.0.mlp.up_proj.weight: t=1\n",
        "model.norm.weight: t=0.5\n",
    ):
        assert line in printed


EXPECTED_PLAN = {
    "merge.yaml": _merge,
    "ratios.yaml": _ratios,
    "toolkit-task-arithmetic.yaml": _toolkit("task_arithmetic", 3),
    "toolkit-ties.yaml": _toolkit("ties", 3),
    "toolkit-slerp.yaml": _toolkit("slerp", 2),
    "mergekit-slerp.yaml": _mergekit,
}

EXPECTED_KINDS = {
    "sweep.yaml": ["MA"] * 5 + ["blocks", "LiNeS", "LiNeS", "model", "HMA"],
    "sweep-adaptive.yaml": ["MA"] * 3 + ["LiNeS"],
    "sweep-ray.yaml": ["MA"] * 11 + ["LiNeS"],
}


@pytest.mark.parametrize("name", SWEEPS)
def test_a_sweep_example_loads_and_its_candidates_plan(name, examples, capsys, monkeypatch, tmp_path):
    from taxcut import plan

    monkeypatch.chdir(tmp_path)
    before = _digest(examples)
    spec = SweepSpec.from_yaml(examples / name)
    assert spec.out == examples / f"{name.removesuffix('.yaml')}-out"
    for role, path in spec.evaluation.input_files():
        assert path.is_file(), f"{name}: {role} {path} is not in examples/specs"
    candidates = expand_grid(spec.candidates)
    assert [c.kind for c in candidates] == EXPECTED_KINDS[name]
    for candidate in candidates:
        if candidate.model is None:
            with plan(candidate.merge_spec(spec.sft, spec.aligned)) as merge_plan:
                assert merge_plan.layout.num_layers == 4
    assert _digest(examples) == before


def test_the_sweeps_settings_are_read(examples):
    """What each sweep example is there to show is what its spec holds."""
    grid = SweepSpec.from_yaml(examples / "sweep.yaml")
    assert grid.candidates.all_profiles() == [[0.2, 0.6], [0.4, 0.4]]
    assert from_ratios_file(grid.candidates.ratio_files[0]).alphas == [0.42, 0.54, 0.54]
    assert Path(grid.evaluation.reward.function.rpartition(":")[0]).is_file()
    adaptive = SweepSpec.from_yaml(examples / "sweep-adaptive.yaml")
    assert (adaptive.candidates.strategy, adaptive.candidates.budget) == ("adaptive", 10)
    assert (adaptive.evaluation.fidelity, adaptive.evaluation.halving.start) == ("halving", 0.25)
    ray = SweepSpec.from_yaml(examples / "sweep-ray.yaml")
    assert (ray.executor.ray.address, ray.executor.ray.workers, ray.executor.sources) == ("auto", 4, "host")
