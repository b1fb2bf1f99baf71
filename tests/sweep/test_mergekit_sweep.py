"""Sweeping a mergekit config along one of its parameters: each value is a candidate, merged as
`taxcut merge CONFIG` merges the config with that value, evaluated like any candidate, and exported bit for bit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from models import load_weights

from taxcut.cli import main
from taxcut.errors import TaxcutError
from taxcut.lab.build import LabConfig, build_lab
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.resident import ResidentModel
from taxcut.sweep.runner import RESULTS_FILE, run_sweep

VALUES = [0.3, [0.0, 0.5, 1.0]]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return build_lab(LabConfig.quick(seed=0), tmp_path_factory.mktemp("mergekit-sweep") / "lab", log=lambda *_: None)


def _head(source: Path, target: Path, lines: int) -> str:
    target.write_text("".join(source.read_text().splitlines(keepends=True)[:lines]))
    return str(target)


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _config(lab, folder: Path, **parameters) -> Path:
    """A slerp config of the lab pair in mergekit's own form, its models relative to the config's folder."""
    sft, aligned = (os.path.relpath(p, folder) for p in (lab.sft, lab.aligned))
    return _write(
        folder / "slerp.yml",
        {
            "merge_method": "slerp",
            "base_model": sft,
            "dtype": "float32",
            "models": [{"model": sft}, {"model": aligned}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.5}], **parameters},
        },
    )


def _sweep(lab, folder: Path, config: Path, values=VALUES) -> Path:
    """The sweep spec: the SFT baseline and one candidate per value of the config's `t`, on a few lab items."""
    task = lab.capability_tasks[0]
    return _write(
        folder / "sweep.yaml",
        {
            "sft": str(lab.sft),
            "aligned": str(lab.aligned),
            "out": "sweep-out",
            "device": "cpu",
            "candidates": {
                "grid": [],
                "mergekit": {"config": config.name, "sweep_over": {"parameter": "t", "values": values}},
            },
            "evaluation": {
                "reward": {
                    "prompts": _head(lab.data / "chat_prompts.jsonl", folder / "prompts.jsonl", 4),
                    "function": "taxcut.lab.tasks:reward",
                    "max_new_tokens": 40,
                },
                "tasks": [
                    {
                        "name": task,
                        "type": "generation",
                        "max_new_tokens": 8,
                        "path": _head(lab.data / f"{task}.jsonl", folder / "task.jsonl", 8),
                    }
                ],
            },
        },
    )


def _digest(*paths: Path) -> str:
    return hashlib.sha256(
        b"".join(
            p.read_bytes()
            for path in paths
            for p in ([path] if path.is_file() else sorted(path.rglob("*")))
            if p.is_file()
        )
    ).hexdigest()


def test_a_sweep_over_a_slerp_configs_t_runs_on_the_lab_and_exports_what_merge_writes(lab, tmp_path):
    config = _config(lab, tmp_path)
    spec_path = _sweep(lab, tmp_path, config)
    before = _digest(lab.sft, lab.aligned, config)
    report = run_sweep(SweepSpec.from_yaml(spec_path), progress=False)
    records = [json.loads(line) for line in (tmp_path / "sweep-out" / RESULTS_FILE).read_text().splitlines()]
    assert [r["label"] for r in records] == ["MA a=0", "mergekit slerp t=0.3", "mergekit slerp t=[0, 0.5, 1]"]
    assert [r["kind"] for r in records[1:]] == ["mergekit", "mergekit"]
    assert records[1]["candidate"]["mergekit"]["config"]["models"] == [{"model": "sft"}, {"model": "aligned"}]
    assert records[2]["candidate"]["mergekit"]["value"] == VALUES[1]
    assert all(r["reward"]["samples"] == 4 for r in records) and len(report.rows) == 3
    assert _digest(lab.sft, lab.aligned, config) == before  # inputs untouched

    # the same config and values, read again: the same ids, so nothing is measured twice
    again = SweepSpec.from_yaml(spec_path)
    run_sweep(again, progress=False)
    assert len((tmp_path / "sweep-out" / RESULTS_FILE).read_text().splitlines()) == 3

    # export of the gradient candidate = `taxcut merge` of the config with that value, byte for byte
    candidate = records[2]["candidate_id"]
    assert (
        main(["export", str(tmp_path / "sweep-out"), "--candidate", candidate, "--out", str(tmp_path / "exported")])
        == 0
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    merged_config = _config(lab, plain, t=VALUES[1])  # the config with its t replaced by the swept value
    assert main(["merge", str(merged_config), "--out", str(tmp_path / "merged"), "--no-progress"]) == 0
    files = sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors"))
    assert files == sorted(p.name for p in (tmp_path / "exported").glob("*.safetensors"))
    assert all((tmp_path / "merged" / f).read_bytes() == (tmp_path / "exported" / f).read_bytes() for f in files)
    merged = load_weights(tmp_path / "merged")
    sft, aligned = load_weights(lab.sft), load_weights(lab.aligned)
    name = "model.layers.0.mlp.up_proj.weight"  # the gradient's first value: t = 0, the base
    assert torch.equal(merged[name], sft[name])
    assert any(not torch.equal(t, sft[n]) and not torch.equal(t, aligned[n]) for n, t in merged.items())

    # and the model the sweep evaluated holds those weights
    resident = ResidentModel(lab.sft, lab.aligned)
    resident.apply(next(c for c in expand(again) if c.id == candidate))
    live = {resident.stored_name[n]: p.detach() for n, p in resident.parameters.items()}
    assert all(torch.equal(live[name], tensor) for name, tensor in merged.items() if name in live)


def expand(spec: SweepSpec):
    from taxcut.spec.candidates import expand_grid

    return expand_grid(spec.candidates)


def test_ids_follow_the_configs_content_and_the_value(lab, tmp_path):
    first = expand(SweepSpec.from_yaml(_sweep(lab, tmp_path, _config(lab, tmp_path))))
    ids = [c.id for c in first[1:]]
    assert len(set(ids)) == 2
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    assert [c.id for c in expand(SweepSpec.from_yaml(_sweep(lab, moved, _config(lab, moved))))[1:]] == ids
    edited = _config(lab, tmp_path, normalize=True)  # another parameter: another config, other ids
    assert not set(ids) & {c.id for c in expand(SweepSpec.from_yaml(_sweep(lab, tmp_path, edited)))[1:]}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c, lab: c["models"].append({"model": str(lab.checkpoints[0])}),
            "model '.*' is neither the sweep's sft .* nor its aligned model; a swept config merges those two",
        ),
        (
            lambda c, lab: c["models"][1].update(parameters={"t": 0.2}),
            "'t' is also set in the parameters of model '.*', which would win over the swept value",
        ),
    ],
)
def test_a_config_of_other_models_or_a_per_model_value_is_refused(lab, tmp_path, capsys, change, message):
    config = _config(lab, tmp_path)
    data = yaml.safe_load(config.read_text())
    change(data, lab)
    _write(config, data)
    spec_path = _sweep(lab, tmp_path, config)
    before = _digest(config, spec_path)
    with pytest.raises(TaxcutError, match=message):
        SweepSpec.from_yaml(spec_path)
    assert main(["sweep", str(spec_path), "--no-progress"]) != 0
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not (tmp_path / "sweep-out").exists() and _digest(config, spec_path) == before


def test_an_unknown_swept_parameter_is_refused_before_any_evaluation(lab, tmp_path, capsys):
    spec_path = _sweep(lab, tmp_path, _config(lab, tmp_path))
    data = yaml.safe_load(spec_path.read_text())
    data["candidates"]["mergekit"]["sweep_over"]["parameter"] = "weight_decay"
    _write(spec_path, data)
    assert main(["sweep", str(spec_path), "--no-progress"]) != 0
    assert "'weight_decay' is not a parameter of mergekit's 'slerp'" in capsys.readouterr().err
    assert not (tmp_path / "sweep-out" / RESULTS_FILE).exists()
