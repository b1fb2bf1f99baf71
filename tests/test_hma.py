"""HMA: the parameterisation, the fit loop, its ratios file, the fit set, and HMA/search in sweeps."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from models import load_weights

from taxcut import MergeSpec, TaxcutError, merge
from taxcut.cli import main
from taxcut.hma.fit import fit_ratios
from taxcut.hma.ratios import block_ratios, initial_logits, ratio_bounds
from taxcut.hma.ratios_file import ratios_spec, write_ratios
from taxcut.hma.sample import sample_fit_set
from taxcut.lab.build import LabConfig, build_lab
from taxcut.spec.fit import FitSettings
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.runner import RESULTS_FILE, run_sweep


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return build_lab(LabConfig.quick(seed=0), tmp_path_factory.mktemp("hma") / "lab", log=lambda *_: None)


@pytest.fixture(scope="module")
def fit_set(lab, tmp_path_factory):
    path = tmp_path_factory.mktemp("fitset") / "fit.jsonl"
    sample_fit_set(lab.aligned, lab.data / "chat_prompts.jsonl", path, n=3, keep=12,
                   reward_function="taxcut.lab.tasks:reward")
    return path


def test_ratios_keep_their_mean_and_bounds():
    generator = torch.Generator().manual_seed(0)
    for alpha in (0.1, 0.5, 0.83):
        for blocks in (1, 3, 6):
            for eps in (0.01, 0.1, 1.0):
                low, high = ratio_bounds(alpha, blocks, eps)
                for _ in range(20):
                    ratios = block_ratios(torch.randn(blocks, generator=generator) * 5, alpha, eps)
                    assert ratios.mean().item() == pytest.approx(alpha, abs=1e-6)
                    assert low - 1e-6 <= ratios.min().item() and ratios.max().item() <= high + 1e-6
                extreme = block_ratios(torch.tensor([30.0] + [-30.0] * (blocks - 1)), alpha, eps)
                assert extreme[0].item() == pytest.approx(high, rel=1e-5)
    assert torch.allclose(block_ratios(initial_logits(0.3, 3), 0.3, 0.05), torch.full((3,), 0.3))


def test_fit_moves_only_the_block_logits_and_keeps_the_mean(lab, fit_set):
    before = {p.name: load_weights(p) for p in (lab.sft, lab.aligned)}
    result = fit_ratios(lab.sft, lab.aligned, fit_set, FitSettings(alpha=0.4, lr=0.2, batch_size=4),
                        log=lambda *_: None)
    assert all(sum(r) / len(r) == pytest.approx(0.4, abs=1e-6) for r in result.ratio_history)
    assert result.ratio_history[-1] != pytest.approx([0.4] * 3)  # the gradients reached the logits
    for folder in (lab.sft, lab.aligned):  # the models themselves are untouched
        after = load_weights(folder)
        assert all(torch.equal(after[k], v) for k, v in before[folder.name].items())


@pytest.mark.parametrize("scope", ["all", "paper"])
def test_fitted_model_equals_merge_of_the_ratios_file(lab, fit_set, tmp_path, scope):
    settings = FitSettings(alpha=0.6, lr=0.2, batch_size=4, scope=scope)
    result = fit_ratios(lab.sft, lab.aligned, fit_set, settings, log=lambda *_: None, keep_weights=True)
    path = tmp_path / "ratios.yaml"
    write_ratios(path, ratios_spec(result, settings, lab.sft, lab.aligned, fit_set))
    spec = MergeSpec.from_yaml(path, {"out": str(tmp_path / "merged")})
    assert spec.fit.settings.alpha == 0.6 and "weighs the ALIGNED model" in spec.fit.convention
    merged = load_weights(merge(spec))
    assert set(result.weights) == set(merged)
    for name, tensor in merged.items():
        assert torch.equal(tensor, result.weights[name]), name
    sft = load_weights(lab.sft)
    if scope == "paper":  # embeddings and norms from SFT
        assert torch.equal(merged["model.embed_tokens.weight"], sft["model.embed_tokens.weight"])
        assert torch.equal(merged["model.norm.weight"], sft["model.norm.weight"])
        assert torch.equal(merged["model.layers.0.input_layernorm.weight"], sft["model.layers.0.input_layernorm.weight"])


def test_a_short_fit_lowers_the_fit_loss(lab, fit_set):
    settings = FitSettings(alpha=0.5, lr=0.3, batch_size=64, epochs=8, warmup=0.0)  # full batch: one objective
    result = fit_ratios(lab.sft, lab.aligned, fit_set, settings, log=lambda *_: None)
    assert result.losses[-1] < result.losses[0]


def test_fit_bad_inputs(lab, fit_set, tmp_path):
    for alpha in (0.0, 1.0, 1.2):
        with pytest.raises(TaxcutError, match="HMA needs 0 < a < 1"):
            FitSettings(alpha=alpha)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TaxcutError, match="no records; the fit set file is empty"):
        fit_ratios(lab.sft, lab.aligned, tmp_path / "empty.jsonl", FitSettings(alpha=0.5), log=lambda *_: None)
    (tmp_path / "long.jsonl").write_text(json.dumps({"prompt": "x" * 500, "response": "ok"}) + "\n")
    with pytest.raises(TaxcutError, match="long.jsonl, record 1: prompt and response are .* tokens, longer than"):
        fit_ratios(lab.sft, lab.aligned, tmp_path / "long.jsonl", FitSettings(alpha=0.5), log=lambda *_: None)
    with pytest.raises(TaxcutError, match="--blocks 9: the model has only 3 decoder layers"):
        fit_ratios(lab.sft, lab.aligned, fit_set, FitSettings(alpha=0.5, blocks=9), log=lambda *_: None)


def test_sample_keeps_the_best(fit_set):
    rows = [json.loads(line) for line in fit_set.read_text().splitlines()]
    assert len(rows) == 12 and {"prompt", "response", "reward"} <= set(rows[0])
    assert [r["reward"] for r in rows] == sorted((r["reward"] for r in rows), reverse=True)


def test_cli_fit_then_merge_and_plan(lab, fit_set, tmp_path, capsys):
    ratios = tmp_path / "ratios.yaml"
    assert main(["fit", "--sft", str(lab.sft), "--aligned", str(lab.aligned), "--data", str(fit_set),
                 "--alpha", "0.5", "--lr", "0.2", "--out", str(ratios)]) == 0
    assert main(["plan", str(ratios)]) == 0
    assert "block 1 (layer 0)" in capsys.readouterr().out
    assert main(["merge", str(ratios), "--out", str(tmp_path / "m"), "--no-progress"]) == 0
    assert main(["fit", "--sft", str(lab.sft), "--aligned", str(lab.aligned), "--data", str(fit_set),
                 "--alpha", "1.5", "--out", str(ratios)]) == 2
    assert "HMA needs 0 < a < 1" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_with_hma_and_search_resumes(lab, fit_set, tmp_path):
    pytest.importorskip("optuna")
    data = {
        "sft": str(lab.sft), "aligned": str(lab.aligned), "out": str(tmp_path / "out"),
        "candidates": {"grid": [0.0, 0.5, 1.0], "hma": {"data": str(fit_set), "mean_alphas": [0.5], "lr": 0.2}},
        "search": {"budget": 3},
        "evaluation": {"reward": {"prompts": str(lab.data / "chat_prompts.jsonl"),
                                  "function": "taxcut.lab.tasks:reward", "max_new_tokens": 8},
                       "tasks": [{"name": "facts", "type": "generation", "path": str(lab.data / "facts.jsonl"),
                                  "max_new_tokens": 4}]},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    report = run_sweep(SweepSpec.from_yaml(tmp_path / "s.yaml"), progress=False)
    kinds = [row.kind for row in report.rows]
    assert kinds.count("HMA") == 1 and kinds.count("search") == 3 and kinds.count("MA") == 3
    hma = next(row for row in report.rows if row.kind == "HMA")
    assert hma.mean_alpha == pytest.approx(0.5, abs=1e-6)
    lines = (tmp_path / "out" / RESULTS_FILE).read_text().splitlines()
    run_sweep(SweepSpec.from_yaml(tmp_path / "s.yaml"), progress=False)  # everything done: nothing re-evaluated
    assert (tmp_path / "out" / RESULTS_FILE).read_text().splitlines() == lines


def test_fit_settings_are_checked():
    for fields, message in (({"batch_size": 0}, "'batch_size' = 0: must be at least 1"),
                            ({"epochs": 0}, "'epochs' = 0: must be at least 1"),
                            ({"lr": 0.0}, "'lr' = 0.0: must be a positive finite number")):
        with pytest.raises(TaxcutError, match=message):
            FitSettings(alpha=0.5, **fields)


def test_fit_refuses_non_finite_weights(llama_pair, tmp_path, capsys):
    import shutil

    from safetensors.torch import save_file

    aligned = shutil.copytree(llama_pair[1], tmp_path / "aligned")
    tensors = load_weights(aligned)
    tensors["model.layers.1.mlp.down_proj.weight"][3, 2] = float("nan")
    save_file(tensors, aligned / "model.safetensors", metadata={"format": "pt"})
    data = tmp_path / "fit.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}", "response": f" w{i + 2}"}) + "\n"
                            for i in range(4, 12)))
    ratios = tmp_path / "ratios.yaml"
    assert main(["fit", "--sft", str(llama_pair[0]), "--aligned", str(aligned), "--data", str(data),
                 "--alpha", "0.5", "--device", "cpu", "--out", str(ratios)]) == 2
    error = capsys.readouterr().err
    assert f"tensor 'model.layers.1.mlp.down_proj.weight' of the aligned model ({aligned}) contains NaN or Inf" in error
    assert error.count("\n") == 1 and not ratios.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "nan"], "--lr nan: must be a positive finite number"),
    (["--alpha", "1.5"], "--alpha 1.5: HMA needs 0 < a < 1"),
    (["--reg", "0.1,0.2"], "--reg 0.1,0.2: gives 2 weights for 3 blocks"),
    (["--blocks", "0"], "--blocks 0: must be at least 1"),
])
def test_bad_fit_flags_are_one_line_errors(llama_pair, tmp_path, capsys, flags, message):
    arguments = ["fit", "--sft", str(llama_pair[0]), "--aligned", str(llama_pair[1]), "--data",
                 str(tmp_path / "fit.jsonl"), "--alpha", "0.5", "--out", str(tmp_path / "ratios.yaml")]
    assert main(arguments + flags) == 2
    error = capsys.readouterr().err
    assert f"taxcut: error: {message}" in error and error.count("\n") == 1
    assert not (tmp_path / "ratios.yaml").exists()
