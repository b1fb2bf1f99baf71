"""One fit-settings model: its checks, the flags built from it, the sweep's hma section and the ratios file."""

from __future__ import annotations

import math

import pytest
import yaml

from taxcut import MergeSpec, TaxcutError
from taxcut.cli import build_parser
from taxcut.spec.candidates import HmaGrid
from taxcut.spec.fit import FitOptions, FitRecord, FitSettings, SettingError


def test_defaults_and_one_weight_per_block():
    settings = FitSettings(alpha=0.5)
    assert (
        settings.preset,
        settings.blocks,
        settings.normalize,
        settings.eps,
        settings.scope,
        settings.loss,
        settings.draw,
        settings.epochs,
        settings.batch_size,
        settings.lr,
        settings.warmup,
        settings.seed,
        settings.device,
    ) == ("taxcut", 3, "sft", 0.05, "all", "response", 1.0, 1, 8, 0.05, 0.1, 0, "auto")
    assert settings.reg == [0.0, 0.0, 0.0]
    assert FitSettings(alpha=0.5, blocks=2, reg=0.3).reg == [0.3, 0.3]
    assert FitSettings(alpha=0.5, reg=[0.1]).reg == [0.1, 0.1, 0.1]
    assert FitSettings(alpha=0.5, reg=[0.0, 1.0, 0.0]).reg == [0.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("fields", "setting", "problem"),
    [
        ({"alpha": 0.0}, "alpha", "HMA needs 0 < a < 1"),
        ({"alpha": 1.0}, "alpha", "HMA needs 0 < a < 1"),
        ({"alpha": math.nan}, "alpha", "HMA needs 0 < a < 1"),
        ({"lr": math.nan}, "lr", "must be a positive finite number"),
        ({"lr": math.inf}, "lr", "must be a positive finite number"),
        ({"eps": -0.1}, "eps", "must be non-negative finite numbers"),
        ({"eps": [0.1, math.nan]}, "eps", "must be non-negative finite numbers"),
        ({"draw": 0.0}, "draw", "0 < draw <= 1"),
        ({"normalize": "both"}, "normalize", "'sft' or 'aligned'"),
        ({"preset": "lmflow"}, "preset", "'taxcut' or 'paper'"),
        ({"blocks": 0}, "blocks", "must be at least 1"),
        ({"warmup": 1.0}, "warmup", "0 <= warmup < 1"),
        ({"reg": -0.1}, "reg", "weights must be non-negative finite numbers"),
        ({"reg": [0.1, 0.2]}, "reg", "gives 2 weights for 3 blocks: give one weight, or one per block"),
        ({"blocks": True}, "blocks", "expected a number, got true/false"),
        ({"device": "tpu"}, "device", "'auto', 'cpu' or 'cuda'"),
        ({"learning_rate": 0.1}, "learning_rate", "is not a known setting"),
    ],
)
def test_bad_settings_name_the_setting(fields, setting, problem):
    with pytest.raises(SettingError) as caught:
        FitSettings(**{"alpha": 0.5, **fields})
    assert caught.value.setting == setting and problem in caught.value.problem
    assert str(caught.value).startswith(f"fit setting '{setting}' = ") and "\n" not in str(caught.value)
    assert isinstance(caught.value, TaxcutError)


def test_every_setting_has_its_flag_with_the_model_default():
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    flags = {action.dest: action for action in fit._actions}
    for name, field in FitSettings.model_fields.items():
        action = flags[name]
        assert action.option_strings == [f"--{name.replace('_', '-')}"]
        assert action.required == field.is_required() and action.default is None  # defaults: the model's
        assert field.description and action.help.startswith(field.description)
    assert flags["scope"].choices == ["all", "paper"] and flags["device"].choices == ["auto", "cpu", "cuda"]
    assert flags["preset"].choices == ["taxcut", "paper"] and flags["normalize"].choices == ["sft", "aligned"]
    args = fit.parse_args(
        [
            "--sft",
            "s",
            "--aligned",
            "a",
            "--data",
            "d",
            "--out",
            "o",
            "--alpha",
            "0.4",
            "--reg",
            "0,1,0",
            "--batch-size",
            "4",
            "--eps",
            "0,0.1,0.2",
        ]
    )
    assert (args.alpha, args.reg, args.batch_size, args.lr, args.eps) == (
        0.4,
        [0.0, 1.0, 0.0],
        4,
        None,
        [0.0, 0.1, 0.2],
    )
    assert (
        fit.parse_args(
            ["--sft", "s", "--aligned", "a", "--data", "d", "--out", "o", "--alpha", "0.4", "--reg", "paper"]
        ).reg
        == "paper"
    )
    for name in ("normalize", "eps", "reg", "scope", "loss", "draw", "batch_size", "lr", "warmup"):
        assert "taxcut" in flags[name].help and "paper" in flags[name].help, name  # says which default is whose


def test_the_paper_preset_and_its_overrides():
    paper = FitSettings(alpha=0.8, preset="paper")
    assert (
        paper.normalize,
        paper.eps,
        paper.scope,
        paper.loss,
        paper.draw,
        paper.reg,
        paper.lr,
        paper.warmup,
        paper.epochs,
        paper.batch_size,
    ) == ("sft", 0.2, "paper", "prompt+response", 0.4, "paper", 2e-5, 0.03, 1, 1)
    mine = FitSettings(alpha=0.8, preset="paper", lr=0.1, eps=[0.0, 0.5])  # a setting given wins over the preset
    assert (mine.lr, mine.eps_values(), mine.scope) == (0.1, [0.0, 0.5], "paper")
    again = FitSettings(**paper.model_dump())  # the recorded settings read back as they were
    assert again == paper
    assert FitSettings(alpha=0.5, eps=[0.3]).eps == 0.3 and FitSettings(alpha=0.5).eps_values() == [0.05]


def test_the_sweeps_hma_section_shares_the_options():
    shared = set(FitOptions.model_fields)
    assert set(HmaGrid.model_fields) == shared | {"data", "mean_alphas", "retain"}
    assert set(FitSettings.model_fields) == shared | {"alpha", "device"}
    grid = HmaGrid(data="fit.jsonl", mean_alphas=[0.3, 0.7], lr=0.2, reg=0.5)
    settings = grid.settings(0.7, "cpu")
    assert (settings.alpha, settings.device, settings.lr, settings.reg) == (0.7, "cpu", 0.2, [0.5, 0.5, 0.5])


RATIOS_FILE_OF_TODAY = """\
sft: /models/sft
aligned: /models/dpo
alphas: [0.41, 0.5, 0.59]
block_bounds: [[0, 0], [1, 1], [2, 2]]
rules:
- {regex: lm_head\\.weight, alpha: 0.5}
fit:
  method: 'HMA (Lin et al., EMNLP 2024): a_k = a*K*(sigmoid(s_k)+eps)/sum_j(sigmoid(s_j)+eps)'
  convention: a weighs the ALIGNED model
  settings: {alpha: 0.5, blocks: 3, eps: 0.05, reg: [0.0, 0.0, 0.0], scope: all, epochs: 1, batch_size: 8,
             lr: 0.2, warmup: 0.1, seed: 0, device: auto}
  data: /data/fit.jsonl
  steps: 3
  loss_first: 2.5
  loss_last: 2.25
  loss_curve: [2.5, 2.4, 2.25]
"""


def test_a_ratios_file_written_before_reads_and_round_trips(tmp_path):
    path = tmp_path / "ratios.yaml"
    path.write_text(RATIOS_FILE_OF_TODAY)
    spec = MergeSpec.from_yaml(path)
    assert isinstance(spec.fit, FitRecord) and spec.fit.settings.lr == 0.2 and spec.fit.loss_curve[-1] == 2.25
    again = yaml.safe_load(spec.to_yaml())
    before = yaml.safe_load(RATIOS_FILE_OF_TODAY)["fit"]
    settings = again["fit"].pop("settings")
    assert settings == {
        **before.pop("settings"),
        "preset": "taxcut",
        "normalize": "aligned",
        "loss": "response",
        "draw": 1.0,
        "retain_weight": 0.0,
        "granularity": "block",
        "mean": "fixed",
    }  # fitted before
    # 'normalize' existed: the aligned share; new settings' defaults (no retention term: today's fit)
    assert again["fit"] == {
        **before,
        "adjustments": [],
        "retain": None,
        "retain_kl_first": None,
        "retain_kl_last": None,
    }
    assert list(again)[:2] == ["sft", "aligned"]


def test_only_known_fit_fields_are_kept(tmp_path):
    data = yaml.safe_load(RATIOS_FILE_OF_TODAY)
    data["fit"]["notes"] = "hand-written"
    path = tmp_path / "ratios.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = MergeSpec.from_yaml(path)
    assert "notes" not in spec.model_dump()["fit"]


def test_bad_settings_in_a_ratios_file_are_one_line(tmp_path):
    data = yaml.safe_load(RATIOS_FILE_OF_TODAY)
    data["fit"]["settings"]["lr"] = ".nan"
    path = tmp_path / "ratios.yaml"
    path.write_text(yaml.safe_dump(data).replace("'.nan'", ".nan"))
    with pytest.raises(TaxcutError, match=r"ratios.yaml: fit setting 'lr' = nan: must be a positive finite number"):
        MergeSpec.from_yaml(path)
