"""HMA: the parameterisation, the fit loop, its ratios file, the fit set, and HMA/search in sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from models import load_weights

from taxcut import MergeSpec, TaxcutError, merge
from taxcut.cli import main
from taxcut.hma.fit import fit_ratios
from taxcut.hma.ratios import (
    block_ratios,
    bounded_eps,
    initial_logits,
    min_eps,
    normalized_share,
    paper_reg_weights,
    ratio_bounds,
)
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
    sample_fit_set(
        lab.aligned, lab.data / "chat_prompts.jsonl", path, n=3, keep=12, reward_function="taxcut.lab.tasks:reward"
    )
    return path


@pytest.mark.parametrize("normalize", ["sft", "aligned"])
def test_every_block_ratio_stays_in_zero_one_with_mean_a(normalize):
    """The bound, as a property over random logits: K in 1..6, a in (0, 1), any eps (raised by bounded_eps)."""
    generator = torch.Generator().manual_seed(0)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand(1, generator=generator).item()

    for _ in range(4000):
        blocks = int(torch.randint(1, 7, (1,), generator=generator))
        alpha = uniform(1e-3, 1 - 1e-3)
        eps = bounded_eps(alpha, blocks, uniform(0.0, 1.0) if uniform(0, 1) < 0.8 else 0.0, normalize)
        spread = [0.1, 3.0, 30.0][int(torch.randint(0, 3, (1,), generator=generator))]
        for logits in (
            torch.randn(blocks, generator=generator) * spread,
            torch.tensor([spread] + [-spread] * (blocks - 1)),
        ):  # one block pulled to its extreme
            ratios = block_ratios(logits, alpha, eps, normalize)
            assert 0.0 <= ratios.min().item() and ratios.max().item() <= 1.0, (alpha, blocks, eps, logits)
            assert ratios.mean().item() == pytest.approx(alpha, abs=1e-5), (alpha, blocks, eps, logits)
    for alpha in (0.1, 0.5, 0.8):
        start = block_ratios(initial_logits(alpha, 3, normalize), alpha, 0.05, normalize)
        assert torch.allclose(start, torch.full((3,), alpha))  # the fit starts at MA


def test_the_bound_is_tight_and_where_the_paper_says():
    # at a = 0.8, K = 3: normalising the SFT share keeps every block within [0.55, 0.95] at eps 0.2 and needs no eps
    assert ratio_bounds(0.8, 3, 0.2, "sft") == pytest.approx((0.55, 0.9538), abs=1e-4)
    assert min_eps(normalized_share(0.8, "sft"), 3) == 0.0
    # normalising the aligned share there reaches 2.19 at eps 0.05; the smallest eps that keeps [0, 1] is 7/3
    assert ratio_bounds(0.8, 3, 0.05, "aligned")[1] == pytest.approx(2.1913, abs=1e-4)
    assert bounded_eps(0.8, 3, 0.05, "aligned") == pytest.approx(7 / 3)
    for normalize in ("sft", "aligned"):
        for alpha in (0.2, 0.4, 0.5, 0.6, 0.8):
            for blocks in (2, 3, 6):
                needed = min_eps(normalized_share(alpha, normalize), blocks)
                if needed == 0:
                    continue
                low, high = ratio_bounds(alpha, blocks, needed, normalize)  # touches the edge, stays inside
                assert min(low, 1 - high) == pytest.approx(0.0, abs=1e-9) and low >= -1e-9 and high <= 1 + 1e-9
                low, high = ratio_bounds(alpha, blocks, 0.9 * needed, normalize)  # any less leaves [0, 1]
                assert low < 0 or high > 1
                edge = block_ratios(torch.tensor([40.0] + [-40.0] * (blocks - 1)), alpha, needed, normalize)
                assert edge.min().item() >= 0.0 and edge.max().item() <= 1.0


def test_paper_reg_weights_pin_the_middle_block():
    layers = [(layer, block) for layer, block in zip(range(26), [0] * 8 + [1] * 8 + [2] * 10) for _ in range(7)]
    weights = paper_reg_weights(layers, 26, 3)
    assert weights[1] > weights[2] > weights[0]
    assert weights == pytest.approx([0.0140, 0.0575, 0.0236], abs=1e-4)  # the released code's weights, 7 Linears


def test_fit_moves_only_the_block_logits_and_keeps_the_mean(lab, fit_set):
    before = {p.name: load_weights(p) for p in (lab.sft, lab.aligned)}
    result = fit_ratios(
        lab.sft, lab.aligned, fit_set, FitSettings(alpha=0.4, lr=0.2, batch_size=4), log=lambda *_: None
    )
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
        assert torch.equal(
            merged["model.layers.0.input_layernorm.weight"], sft["model.layers.0.input_layernorm.weight"]
        )


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
    assert (
        main(
            [
                "fit",
                "--sft",
                str(lab.sft),
                "--aligned",
                str(lab.aligned),
                "--data",
                str(fit_set),
                "--alpha",
                "0.5",
                "--lr",
                "0.2",
                "--out",
                str(ratios),
            ]
        )
        == 0
    )
    assert main(["plan", str(ratios)]) == 0
    assert "block 1 (layer 0)" in capsys.readouterr().out
    assert main(["merge", str(ratios), "--out", str(tmp_path / "m"), "--no-progress"]) == 0
    assert (
        main(
            [
                "fit",
                "--sft",
                str(lab.sft),
                "--aligned",
                str(lab.aligned),
                "--data",
                str(fit_set),
                "--alpha",
                "1.5",
                "--out",
                str(ratios),
            ]
        )
        == 2
    )
    assert "HMA needs 0 < a < 1" in capsys.readouterr().err


def lab_sweep(lab, tmp_path: Path, candidates: dict, **more) -> SweepSpec:
    """A sweep of the lab's pair, written to and read back from a YAML file, with a short evaluation: the chat
    reward (8 new tokens) and the facts task."""
    data = {
        "sft": str(lab.sft),
        "aligned": str(lab.aligned),
        "out": str(tmp_path / "out"),
        "candidates": candidates,
        "evaluation": {
            "reward": {
                "prompts": str(lab.data / "chat_prompts.jsonl"),
                "function": "taxcut.lab.tasks:reward",
                "max_new_tokens": 8,
            },
            "tasks": [
                {"name": "facts", "type": "generation", "path": str(lab.data / "facts.jsonl"), "max_new_tokens": 4}
            ],
        },
        **more,
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    return SweepSpec.from_yaml(tmp_path / "s.yaml")


@pytest.mark.slow
def test_sweep_with_hma_and_search_resumes(lab, fit_set, tmp_path):
    pytest.importorskip("optuna")
    spec = lab_sweep(
        lab,
        tmp_path,
        {"grid": [0.0, 0.5, 1.0], "hma": {"data": str(fit_set), "mean_alphas": [0.5], "lr": 0.2}},
        search={"budget": 3},
    )
    report = run_sweep(spec, progress=False)
    kinds = [row.kind for row in report.rows]
    assert kinds.count("HMA") == 1 and kinds.count("search") == 3 and kinds.count("MA") == 3
    hma = next(row for row in report.rows if row.kind == "HMA")
    assert hma.mean_alpha == pytest.approx(0.5, abs=1e-6)
    lines = (tmp_path / "out" / RESULTS_FILE).read_text().splitlines()
    run_sweep(SweepSpec.from_yaml(tmp_path / "s.yaml"), progress=False)  # everything done: nothing re-evaluated
    assert (tmp_path / "out" / RESULTS_FILE).read_text().splitlines() == lines


def test_fit_settings_are_checked():
    for fields, message in (
        ({"batch_size": 0}, "'batch_size' = 0: must be at least 1"),
        ({"epochs": 0}, "'epochs' = 0: must be at least 1"),
        ({"lr": 0.0}, "'lr' = 0.0: must be a positive finite number"),
    ):
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
    data.write_text(
        "".join(json.dumps({"prompt": f"w{i} w{i + 1}", "response": f" w{i + 2}"}) + "\n" for i in range(4, 12))
    )
    ratios = tmp_path / "ratios.yaml"
    assert (
        main(
            [
                "fit",
                "--sft",
                str(llama_pair[0]),
                "--aligned",
                str(aligned),
                "--data",
                str(data),
                "--alpha",
                "0.5",
                "--device",
                "cpu",
                "--out",
                str(ratios),
            ]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert f"tensor 'model.layers.1.mlp.down_proj.weight' of the aligned model ({aligned}) contains NaN or Inf" in error
    assert error.count("\n") == 1 and not ratios.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "nan"], "--lr nan: must be a positive finite number"),
        (["--alpha", "1.5"], "--alpha 1.5: HMA needs 0 < a < 1"),
        (["--reg", "0.1,0.2"], "--reg 0.1,0.2: gives 2 weights for 3 blocks"),
        (["--blocks", "0"], "--blocks 0: must be at least 1"),
    ],
)
def test_bad_fit_flags_are_one_line_errors(llama_pair, tmp_path, capsys, flags, message):
    arguments = [
        "fit",
        "--sft",
        str(llama_pair[0]),
        "--aligned",
        str(llama_pair[1]),
        "--data",
        str(tmp_path / "fit.jsonl"),
        "--alpha",
        "0.5",
        "--out",
        str(tmp_path / "ratios.yaml"),
    ]
    assert main(arguments + flags) == 2
    error = capsys.readouterr().err
    assert f"taxcut: error: {message}" in error and error.count("\n") == 1
    assert not (tmp_path / "ratios.yaml").exists()


@pytest.mark.parametrize("alpha", [0.8, 0.9])
@pytest.mark.parametrize("normalize", ["sft", "aligned"])
def test_a_fit_at_high_a_ends_in_a_file_merge_accepts(lab, fit_set, tmp_path, alpha, normalize):
    # eps 0.05 on the aligned share would let a block reach 2.2 at a = 0.8: the fit raises it, says so, records it
    settings = FitSettings(alpha=alpha, normalize=normalize, eps=0.05, lr=0.5, batch_size=2)
    messages = []
    result = fit_ratios(lab.sft, lab.aligned, fit_set, settings, log=messages.append)
    path = tmp_path / "ratios.yaml"
    write_ratios(path, ratios_spec(result, result.settings, lab.sft, lab.aligned, fit_set))
    assert all(0.0 <= a <= 1.0 for step in result.ratio_history for a in step)
    assert sum(result.alphas) / 3 == pytest.approx(alpha, abs=1e-6)
    spec = MergeSpec.from_yaml(path, {"out": str(tmp_path / "merged")})
    if normalize == "aligned":
        assert spec.fit.settings.eps > 2.0 and "eps raised from 0.05 to" in spec.fit.adjustments[0]
        assert any("eps raised from 0.05" in m for m in messages)
    else:
        assert spec.fit.settings.eps == 0.05 and spec.fit.adjustments == []
    assert merge(spec).is_dir()


def test_the_paper_preset_keeps_embeddings_and_norms_at_sft_and_the_head_at_a(lab, fit_set, tmp_path):
    ratios = tmp_path / "paper.yaml"
    assert (
        main(
            [
                "fit",
                "--sft",
                str(lab.sft),
                "--aligned",
                str(lab.aligned),
                "--data",
                str(fit_set),
                "--alpha",
                "0.8",
                "--preset",
                "paper",
                "--out",
                str(ratios),
            ]
        )
        == 0
    )
    spec = MergeSpec.from_yaml(ratios, {"out": str(tmp_path / "merged")})
    settings = spec.fit.settings
    assert (
        settings.preset,
        settings.normalize,
        settings.eps,
        settings.scope,
        settings.loss,
        settings.draw,
        settings.reg,
        settings.lr,
        settings.batch_size,
    ) == ("paper", "sft", 0.2, "paper", "prompt+response", 0.4, "paper", 2e-5, 1)
    assert any(note.startswith("reg paper: w_k = ") for note in spec.fit.adjustments)
    assert spec.fit.steps == round(0.4 * 12)  # batch 1 over 40% of the 12 examples
    merged, sft, aligned = load_weights(merge(spec)), load_weights(lab.sft), load_weights(lab.aligned)
    linear = 0
    for name, tensor in merged.items():
        if "embed" in name or "norm" in name:  # embeddings and every norm: the SFT model's bytes
            assert torch.equal(tensor, sft[name]), name
        elif name == "lm_head.weight":  # the head at a
            assert torch.allclose(tensor, 0.2 * sft[name] + 0.8 * aligned[name], atol=1e-6)
        else:  # a Linear weight of a layer: its block's ratio
            layer = int(name.split(".")[2])
            ratio = spec.alphas[next(k for k, (first, last) in enumerate(spec.block_bounds) if first <= layer <= last)]
            assert torch.allclose(tensor, (1 - ratio) * sft[name] + ratio * aligned[name], atol=1e-6), name
            linear += 1
    assert linear == 3 * 7


def test_loss_on_prompt_and_response_and_the_draw(lab, fit_set):
    response = fit_ratios(
        lab.sft, lab.aligned, fit_set, FitSettings(alpha=0.5, batch_size=12, epochs=1), log=lambda *_: None
    )
    everything = fit_ratios(
        lab.sft,
        lab.aligned,
        fit_set,
        FitSettings(alpha=0.5, batch_size=12, epochs=1, loss="prompt+response"),
        log=lambda *_: None,
    )
    assert response.losses[0] != pytest.approx(everything.losses[0])  # a different objective from the first step
    drawn = fit_ratios(
        lab.sft, lab.aligned, fit_set, FitSettings(alpha=0.5, batch_size=1, draw=0.25), log=lambda *_: None
    )
    assert len(drawn.losses) == 3  # 25% of 12 examples, one per step
    with pytest.raises(TaxcutError, match="a fit takes one eps"):
        fit_ratios(lab.sft, lab.aligned, fit_set, FitSettings(alpha=0.5, eps=[0.1, 0.2]), log=lambda *_: None)


def test_cli_eps_search_writes_one_ratios_file_per_eps(lab, fit_set, tmp_path, capsys):
    ratios = tmp_path / "ratios.yaml"
    assert (
        main(
            [
                "fit",
                "--sft",
                str(lab.sft),
                "--aligned",
                str(lab.aligned),
                "--data",
                str(fit_set),
                "--alpha",
                "0.5",
                "--eps",
                "0,0.2,0.5",
                "--lr",
                "0.2",
                "--out",
                str(ratios),
            ]
        )
        == 0
    )
    # at a = 0.5 and K = 3 any eps below 1/3 lets a block leave [0, 1]: 0 and 0.2 are one fit, at eps 1/3
    written = sorted(p.name for p in tmp_path.glob("ratios-eps*.yaml"))
    assert written == ["ratios-eps0.5.yaml", "ratios-eps0.yaml"] and not ratios.exists()
    eps = sorted(MergeSpec.from_yaml(tmp_path / name).fit.settings.eps for name in written)
    assert eps == pytest.approx([1 / 3, 0.5])
    assert "eps raised from 0 to 0.333333" in capsys.readouterr().out


def test_sweep_fits_one_hma_per_eps_beside_scope_matched_ma(lab, fit_set, tmp_path):
    spec = lab_sweep(
        lab,
        tmp_path,
        {
            "grid": [0.0, 1.0],
            "hma": {"data": str(fit_set), "mean_alphas": [0.8], "preset": "paper", "eps": [0.2, 0.5], "lr": 0.5},
        },
    )
    report = run_sweep(spec, progress=False)
    labels = {row.label: row for row in report.rows}
    assert {"HMA a=0.8 eps=0.2 (paper scope)", "HMA a=0.8 eps=0.5 (paper scope)", "MA a=0.8 (paper scope)"} <= set(
        labels
    )
    scoped = labels["MA a=0.8 (paper scope)"]
    assert scoped.kind == "scoped-MA" and scoped.mean_alpha == pytest.approx(0.8)
    assert [row.kind for row in report.rows].count("HMA") == 2
    lines = [json.loads(line) for line in (tmp_path / "out" / RESULTS_FILE).read_text().splitlines()]
    assert {"scoped-MA", "HMA", "MA"} == {line["kind"] for line in lines}
    table = (tmp_path / "out" / "candidates.md").read_text()
    assert "MA a=0.8 (paper scope)" in table and table.count("| MA a=0 |") == 1
