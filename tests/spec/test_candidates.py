"""Sweep candidates: one declaration of the ratio fields, stable ids, the kinds, and the renamed keys."""

from __future__ import annotations

import logging
import typing

import pytest
import yaml

from taxcut import MergeSpec, TaxcutError
from taxcut.spec import candidates as candidates_module
from taxcut.spec.candidates import Candidate, CandidateGrid, CandidateKind, expand_grid, from_ratios_file, ma_candidate
from taxcut.spec.merge import RATIO_FIELDS, RatioFields
from taxcut.spec.sweep import SweepSpec


def test_one_declaration_of_the_ratio_fields():
    assert RATIO_FIELDS == ("alpha", "alphas", "block_bounds", "layer_alphas", "profile", "rules")
    for model in (MergeSpec, Candidate):
        assert issubclass(model, RatioFields)
        assert not set(RATIO_FIELDS) & set(vars(model).get("__annotations__", {}))  # inherited, not redeclared


def test_ids_do_not_change_so_old_results_files_resume():
    # ids written by earlier versions: a candidate found in a results file is not evaluated again
    assert ma_candidate(0.0).id == "5c7ca5c7cbf8"
    grid = expand_grid(
        CandidateGrid(
            grid=[0.0, 0.3, 1.0],
            block_patterns=[[0.1, 0.5, 0.9]],
            block_bounds=[[0, 1], [2, 2], [3, 3]],
            layer_patterns=[[0.1, 0.2, 0.3, 0.4]],
            rules=[{"match": "lm_head.*", "alpha": 0.4}, {"regex": "x", "alpha": 0.1}],
        )
    )
    assert [c.id for c in grid] == [
        "5c7ca5c7cbf8",
        "8fe94103d0b4",
        "ea4481515041",
        "b08ebffde997",
        "0bcff0e2834e",
        "daa6d3397901",
    ]


def test_kinds_are_a_closed_set():
    assert set(typing.get_args(CandidateKind)) == {
        "MA",
        "scoped-MA",
        "blocks",
        "layers",
        "LiNeS",
        "model",
        "HMA",
        "search",
        "mergekit",
    }
    with pytest.raises(ValueError, match="kind"):
        Candidate(label="x", kind="ma", alpha=0.5)


def test_rules_show_in_the_labels():
    # the SFT model and the grid's a = 0 with rules are two candidates: they must not read "MA a=0" twice
    grid = expand_grid(
        CandidateGrid(
            grid=[0.0, 0.5],
            block_patterns=[[0.2, 0.8]],
            rules=[{"match": "lm_head.*", "alpha": 0.5}, {"regex": "x", "alpha": 0.1}, {"regex": "y", "alpha": 0.0}],
        )
    )
    labels = [c.label for c in grid]
    assert labels == [
        "MA a=0",
        "MA a=0 + lm_head.*=0.5, x=0.1, +1 more",
        "MA a=0.5 + lm_head.*=0.5, x=0.1, +1 more",
        "blocks [0.2, 0.8] + lm_head.*=0.5, x=0.1, +1 more",
    ]
    assert len(set(labels)) == len(labels)
    assert [c.label for c in expand_grid(CandidateGrid(grid=[0.0, 0.5]))] == ["MA a=0", "MA a=0.5"]


def test_a_ratios_file_with_a_fit_record_is_an_hma_candidate(tmp_path):
    path = tmp_path / "ratios.yaml"
    path.write_text(
        yaml.safe_dump(
            {"sft": "s", "aligned": "a", "alphas": [0.4, 0.6], "fit": {"settings": {"alpha": 0.5, "blocks": 2}}}
        )
    )
    candidate = from_ratios_file(path)
    assert (candidate.kind, candidate.label, candidate.alphas) == ("HMA", "HMA ratios", [0.4, 0.6])
    path.write_text(yaml.safe_dump({"sft": "s", "aligned": "a", "alphas": [0.4, 0.6]}))
    assert from_ratios_file(path).kind == "blocks"


@pytest.fixture
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(candidates_module, "_announced", set())


def test_the_old_grid_key_still_reads_with_one_message(fresh_announcements, caplog):
    with caplog.at_level(logging.WARNING, logger="taxcut"):
        first = CandidateGrid.model_validate({"alphas": [0.2, 0.4]})
        CandidateGrid.model_validate({"alphas": [0.6]})
    assert first.grid == [0.2, 0.4]
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["taxcut: warning: 'candidates.alphas' is deprecated; call it 'candidates.grid'"]


def test_the_old_hma_key_still_reads(fresh_announcements, caplog):
    with caplog.at_level(logging.WARNING, logger="taxcut"):
        grid = CandidateGrid.model_validate({"grid": [0.5], "hma": {"data": "fit.jsonl", "alphas": [0.3]}})
    assert grid.hma.mean_alphas == [0.3]
    assert "'candidates.hma.alphas' is deprecated; call it 'candidates.hma.mean_alphas'" in caplog.text


def test_the_deprecation_message_reaches_a_cli_user_once(tmp_path):
    import subprocess
    import sys

    code = (
        "from taxcut.spec.candidates import CandidateGrid as G\n"
        "G.model_validate({'alphas': [0.1]}); G.model_validate({'alphas': [0.2]})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr == "taxcut: warning: 'candidates.alphas' is deprecated; call it 'candidates.grid'\n"


def sweep_data(tmp_path, candidates: dict) -> dict:
    return {
        "sft": "sft",
        "aligned": "aligned",
        "out": "out",
        "candidates": candidates,
        "evaluation": {
            "reward": {"prompts": "p.jsonl", "function": "m:f"},
            "tasks": [{"name": "mc", "type": "multiple_choice", "path": "mc.jsonl"}],
        },
    }


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        ({"grid": [0.5], "alphas": [0.5]}, "give 'candidates.grid' only ('candidates.alphas' is its old name)"),
        (
            {"hma": {"data": "f.jsonl", "mean_alphas": [1.0]}},
            "field 'candidates.hma.mean_alphas' has 1.0, but HMA needs 0 < a < 1",
        ),
        (
            {"hma": {"data": "f.jsonl", "lr": float("nan")}},
            "field 'candidates.hma.lr' must be a positive finite number",
        ),
        ({"hma": {"data": "f.jsonl", "device": "cpu"}}, "field 'candidates.hma.device' is not a known field"),
    ],
)
def test_sweep_spec_errors_name_the_field(tmp_path, candidates, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_data(tmp_path, candidates)))
    with pytest.raises(TaxcutError) as caught:
        SweepSpec.from_yaml(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
