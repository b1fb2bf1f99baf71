"""The results file as typed records: lines written before still read; a broken complete line is named."""

from __future__ import annotations

import json

import pytest

from taxcut import TaxcutError
from taxcut.cli import main
from taxcut.sweep.results import ResultRecord, ResultsStore

# a line as earlier versions wrote it (the reward's sample count a float); its id is its candidate fields' id
OLD_LINE = {
    "aligned": "/m/aligned",
    "candidate": {"alphas": [0.2, 0.5, 0.8]},
    "candidate_id": "feccfa03fb4a",
    "context": "c0ffee",
    "directions": {"mc": True, "text": False},
    "dtype": None,
    "extrapolate": False,
    "finished": "2026-11-20T10:00:00+00:00",
    "kind": "blocks",
    "label": "blocks [0.2, 0.5, 0.8]",
    "mean_alpha": 0.5,
    "primary": {"mc": 0.75, "text": 2.5},
    "reward": {"reward": 0.25, "reward_stderr": 0.05, "samples": 8.0},
    "seconds": 1.234,
    "sft": "/m/sft",
    "tasks": {"mc": {"acc": 0.75, "acc_norm": 0.5}, "text": {"nll": 2.5, "perplexity": 12.18}},
    "taxcut_version": "0.1.0",
}


def test_a_line_written_before_reads_as_a_typed_record(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(OLD_LINE) + "\n")
    (record,) = ResultsStore(path).records()
    assert record.candidate.alphas == [0.2, 0.5, 0.8] and record.kind == "blocks"
    assert record.result.reward.samples == 8 and record.result.primary["text"] == 2.5
    assert record.result.directions == {"mc": True, "text": False}
    assert record.to_json() == {**OLD_LINE, "reward": {**OLD_LINE["reward"], "samples": 8}}


def test_a_record_survives_the_round_trip(tmp_path):
    store = ResultsStore(tmp_path / "results.jsonl")
    record = ResultRecord.from_json(OLD_LINE)
    store.append(record)
    assert store.records() == [record]
    assert store.find("fecc") == record


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"candidate_id": "x"}, "field 'candidate' "),
        ({**OLD_LINE, "primary": {"mc": "high"}}, "field 'primary.mc' Input should be a valid number"),
        ({**OLD_LINE, "kind": "grid"}, "field 'kind' Input should be 'MA', 'scoped-MA', 'blocks'"),
        ({key: value for key, value in OLD_LINE.items() if key != "tasks"}, "field 'tasks' is missing"),
        ([1, 2], "not a result record (expected a JSON object)"),
    ],
)
def test_a_broken_complete_line_names_the_file_and_line(tmp_path, line, problem):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(OLD_LINE) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(TaxcutError) as caught:
        ResultsStore(path).records()
    message = str(caught.value)
    assert message.startswith(f"{path}, line 2: ") and problem in message and "\n" not in message
    assert message.endswith("fix or delete the line")


def test_export_from_a_broken_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({**OLD_LINE, "candidate": {"alphas": "many"}}) + "\n")
    assert main(["export", str(path), "--candidate", "fecc", "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert f"{path}, line 1: not a result record: field 'candidate.alphas'" in error and error.count("\n") == 1
