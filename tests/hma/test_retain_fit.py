"""The tax-aware fit: a retention term W * KL(SFT || merged) on a retain set, per-layer ratios, a free mean, the
lab's retain split, and one sweep candidate per W -- on the quick lab."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from taxcut.cli import main
from taxcut.errors import TaxcutError
from taxcut.evaluation.loading import load_causal_lm, load_tokenizer
from taxcut.hma.fit import fit_ratios
from taxcut.hma.retain import encode_retain_set, read_retain_set, refuse_shared_lines, retain_batches, retention_kl
from taxcut.hma.sample import sample_fit_set
from taxcut.lab.build import LAB_FORMAT, LabConfig, build_lab
from taxcut.lab.retain import evaluation_files, retain_set
from taxcut.spec.fit import FitSettings
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.runner import RESULTS_FILE, run_sweep, sweep_inputs

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return build_lab(LabConfig.quick(seed=0), tmp_path_factory.mktemp("retain") / "lab", **QUIET)


@pytest.fixture(scope="module")
def fit_set(lab, tmp_path_factory):
    path = tmp_path_factory.mktemp("fitset") / "fit.jsonl"
    sample_fit_set(
        lab.aligned, lab.data / "chat_prompts.jsonl", path, n=3, keep=12, reward_function="taxcut.lab.tasks:reward"
    )
    return path


@pytest.fixture(scope="module")
def retain(lab):
    return retain_set(lab)


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_the_lab_retain_split_is_disjoint_from_its_test_items_and_the_same_every_time(lab, retain, tmp_path):
    records = [json.loads(line) for line in retain.read_text().splitlines()]
    assert len(records) == 2 * lab.config.test_per_task  # upper-casing and reversal
    held = {json.loads(line)["prompt"] for _, path in evaluation_files(lab) for line in path.read_text().splitlines()}
    assert not held & {r["prompt"] for r in records}
    assert {r["prompt"].split()[1] for r in records} >= {"upper", "reverse"}  # "User: upper ..." in the chat format
    again = build_lab(LabConfig.quick(seed=0), tmp_path / "lab", **QUIET)  # a fresh build of the same config
    assert retain_set(again).read_bytes() == retain.read_bytes()
    assert retain_set(lab) == retain  # already there: reused, not rewritten
    assert json.loads((lab.folder / "lab.json").read_text())["format"] == LAB_FORMAT  # the cached lab stays valid


def test_the_retention_term_is_zero_for_the_sft_model_and_grows_with_w(lab, fit_set, retain):
    model, tokenizer = load_causal_lm(lab.sft, device="cpu"), load_tokenizer(lab.sft)
    model.eval()
    encoded, _ = encode_retain_set(tokenizer, read_retain_set(retain), retain, None)
    batches = retain_batches(model, encoded, 8, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        own = [retention_kl(model(**b.inputs).logits, b).item() for b in batches]
        aligned = load_causal_lm(lab.aligned, device="cpu").eval()
        other = [retention_kl(aligned(**b.inputs).logits, b).item() for b in batches]
    assert own == pytest.approx([0.0] * len(batches), abs=1e-6)
    assert min(other) > 1e-5  # the aligned model predicts otherwise
    same = fit_ratios(
        lab.sft, lab.sft, fit_set, FitSettings(alpha=0.5, retain_weight=1.0, batch_size=4), retain=retain, **QUIET
    )  # merging the SFT model with itself: the merged model is the SFT model
    assert max(same.retain_kl) == pytest.approx(0.0, abs=1e-6)
    fits = {
        w: fit_ratios(
            lab.sft,
            lab.aligned,
            fit_set,
            FitSettings(alpha=0.5, retain_weight=w, mean="free", lr=0.5, epochs=4, batch_size=4),
            retain=retain,
            **QUIET,
        )
        for w in (0.5, 2.0, 8.0)
    }
    first = {w: fit.retain_kl[0] for w, fit in fits.items()}  # the first step starts at MA for every W
    assert first[0.5] == first[2.0] == first[8.0] > 0
    means = [sum(fits[w].alphas) / 3 for w in (0.5, 2.0, 8.0)]
    assert means[0] > means[1] > means[2]  # a larger W pulls the ratios further toward the SFT model


def test_a_large_w_with_a_free_mean_moves_toward_the_sft_model(lab, fit_set, retain):
    result = fit_ratios(
        lab.sft,
        lab.aligned,
        fit_set,
        FitSettings(alpha=0.5, retain_weight=1000.0, mean="free", lr=0.5, epochs=4, batch_size=4),
        retain=retain,
        **QUIET,
    )
    assert all(a < 0.15 for a in result.alphas), result.alphas
    assert result.retain_kl[-1] < result.retain_kl[0]


def test_w_zero_is_todays_fit(lab, fit_set, retain):
    settings = {"alpha": 0.5, "lr": 0.2, "batch_size": 4}
    today = fit_ratios(lab.sft, lab.aligned, fit_set, FitSettings(**settings), **QUIET)
    zero = fit_ratios(lab.sft, lab.aligned, fit_set, FitSettings(**settings, retain_weight=0.0), retain=retain, **QUIET)
    assert zero.alphas == today.alphas and zero.losses == today.losses and zero.retain_kl == []
    assert today.alphas != [0.5, 0.5, 0.5]  # the fit moved


def test_granularity_layer_gives_one_ratio_per_layer(lab, fit_set, retain):
    result = fit_ratios(
        lab.sft,
        lab.aligned,
        fit_set,
        FitSettings(alpha=0.4, blocks=2, granularity="layer", retain_weight=1.0, lr=0.2, batch_size=4),
        retain=retain,
        **QUIET,
    )
    assert len(result.alphas) == lab.config.layers == 3 and result.block_bounds == [(0, 0), (1, 1), (2, 2)]
    assert sum(result.alphas) / 3 == pytest.approx(0.4, abs=1e-6)  # mean fixed
    blocks = fit_ratios(lab.sft, lab.aligned, fit_set, FitSettings(alpha=0.4, blocks=2, lr=0.2), **QUIET)
    assert len(blocks.alphas) == 2


def test_cli_fit_writes_one_ratios_file_per_w_and_records_it(lab, fit_set, retain, tmp_path, capsys):
    before = digest(fit_set, retain)
    out = tmp_path / "ratios.yaml"
    code = main(
        [
            "fit",
            "--sft",
            str(lab.sft),
            "--aligned",
            str(lab.aligned),
            "--data",
            str(fit_set),
            "--retain",
            str(retain),
            "--retain-weight",
            "0,4",
            "--alpha",
            "0.5",
            "--lr",
            "0.2",
            "--granularity",
            "layer",
            "--mean",
            "free",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    written = {w: yaml.safe_load((tmp_path / f"ratios-w{w}.yaml").read_text()) for w in (0, 4)}
    for weight, spec in written.items():
        assert spec["fit"]["settings"]["retain_weight"] == weight and spec["fit"]["settings"]["mean"] == "free"
        assert len(spec["alphas"]) == 3
    assert written[4]["fit"]["retain"] == str(retain.resolve()) and written[4]["fit"]["retain_kl_first"] > 0
    assert written[0]["fit"]["retain"] is None  # W = 0 used no retain term
    assert not out.exists() and digest(fit_set, retain) == before
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
                "--retain-weight",
                "1",
                "--alpha",
                "0.5",
                "--out",
                str(tmp_path / "x.yaml"),
            ]
        )
        != 0
    )
    assert "--retain-weight above 0 needs --retain FILE" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


def test_a_retain_set_sharing_a_line_with_an_evaluation_file_is_refused(lab, fit_set, retain, tmp_path):
    shared = tmp_path / "retain.jsonl"
    prompt = json.loads((lab.data / "chat_prompts.jsonl").read_text().splitlines()[3])["prompt"]
    shared.write_text(retain.read_text() + json.dumps({"text": prompt}) + "\n")
    spec = lab_sweep(
        lab,
        tmp_path,
        {
            "grid": [0.0, 1.0],
            "hma": {"data": str(fit_set), "mean_alphas": [0.5], "retain": str(shared), "retain_weights": [1]},
        },
    )
    before = digest(shared, fit_set, lab.data / "chat_prompts.jsonl")
    with pytest.raises(
        TaxcutError,
        match=rf"retain set {shared} \(record 21\) shares a line with the reward prompts "
        rf"{lab.data / 'chat_prompts.jsonl'} \(record 4\)",
    ):
        run_sweep(spec, progress=False)
    assert not (tmp_path / "out").exists() and digest(shared, fit_set, lab.data / "chat_prompts.jsonl") == before
    task = tmp_path / "task.jsonl"  # a task item given as prompt + answer, the retain record as one text
    task.write_text(json.dumps({"prompt": "upper abc", "answer": "ABC"}) + "\n")
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "upper abcABC"}) + "\n")
    with pytest.raises(TaxcutError, match=rf"{tmp_path / 'text.jsonl'} .*task 't' data {task}"):
        refuse_shared_lines(tmp_path / "text.jsonl", [("task 't' data", task)])
    refuse_shared_lines(retain, evaluation_files(lab))  # the lab's own split passes


def test_the_sweep_fits_one_hma_candidate_per_w_and_reuses_them(lab, fit_set, retain, tmp_path):
    spec = lab_sweep(
        lab,
        tmp_path,
        {
            "grid": [0.0, 1.0],
            "hma": {
                "data": str(fit_set),
                "mean_alphas": [0.5],
                "retain": str(retain),
                "retain_weights": [0, 4],
                "lr": 0.2,
                "mean": "free",
            },
        },
    )
    assert ("HMA retain set", retain) in sweep_inputs(spec)  # never a destination
    report = run_sweep(spec, progress=False)
    hma = {row.label: row for row in report.rows if row.kind == "HMA"}
    assert set(hma) == {"HMA a=0.5 W=0 (free mean)", "HMA a=0.5 W=4 (free mean)"}
    files = sorted(p.name for p in (tmp_path / "out" / "hma").glob("*.yaml"))
    assert [name.split("-")[3] for name in files] == ["w0", "w4"]
    weights = sorted(
        yaml.safe_load((tmp_path / "out" / "hma" / n).read_text())["fit"]["settings"]["retain_weight"] for n in files
    )
    assert weights == [0, 4]
    lines = (tmp_path / "out" / RESULTS_FILE).read_text().splitlines()
    run_sweep(SweepSpec.from_yaml(tmp_path / "s.yaml"), progress=False)  # cached: no fit, nothing re-evaluated
    assert (tmp_path / "out" / RESULTS_FILE).read_text().splitlines() == lines
    with pytest.raises(TaxcutError, match="'retain_weights' above 0 need 'retain'"):
        lab_sweep(lab, tmp_path / "bad", {"grid": [0.0], "hma": {"data": str(fit_set), "retain_weights": [1]}})


def lab_sweep(lab, tmp_path: Path, candidates: dict) -> SweepSpec:
    """A short sweep of the lab's pair (chat reward, 8 new tokens; the upper-casing task), via a YAML file."""
    tmp_path.mkdir(parents=True, exist_ok=True)
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
                {"name": "upper", "type": "generation", "path": str(lab.data / "uppercase.jsonl"), "max_new_tokens": 4}
            ],
        },
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    return SweepSpec.from_yaml(tmp_path / "s.yaml")


def test_bad_retain_sets_are_one_line_errors_and_never_written_over(lab, fit_set, retain, tmp_path, capsys):
    settings = FitSettings(alpha=0.5, retain_weight=1.0)
    for text, problem in (
        (json.dumps({"text": 5}), r"line 1: 'text' must be text, got int"),
        (json.dumps({"response": "x"}), r"line 1: no 'text' or 'prompt' field"),
        (json.dumps({"text": ""}), r"record 1: 0 token\(s\), nothing to compare the models on"),
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text + "\n")
        with pytest.raises(TaxcutError, match=rf"{bad}(,| ).*{problem}"):
            fit_ratios(lab.sft, lab.aligned, fit_set, settings, retain=bad, **QUIET)
    with pytest.raises(TaxcutError, match=rf"{tmp_path / 'missing.jsonl'}: retain set file not found"):
        fit_ratios(lab.sft, lab.aligned, fit_set, settings, retain=tmp_path / "missing.jsonl", **QUIET)
    with pytest.raises(TaxcutError, match="--retain-weight 1 needs a retain set"):
        fit_ratios(lab.sft, lab.aligned, fit_set, settings, **QUIET)
    before = digest(retain)
    code = main(
        [
            "fit",
            "--sft",
            str(lab.sft),
            "--aligned",
            str(lab.aligned),
            "--data",
            str(fit_set),
            "--retain",
            str(retain),
            "--retain-weight",
            "1",
            "--alpha",
            "0.5",
            "--out",
            str(retain),
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "retain" in err and len(err.strip().splitlines()) == 1
    assert digest(retain) == before
