"""Per-item scores and paired errors: ItemScores, paired differences, McNemar, the paired tax error of a sweep."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml

from taxcut.errors import TaxcutError
from taxcut.evaluation.measurement import Measurement
from taxcut.evaluation.paired import ItemScores, PerItem, mcnemar_p, paired_difference
from taxcut.evaluation.result import EvaluationResult
from taxcut.spec.candidates import ma_candidate
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.noise import paired_tax_stderr
from taxcut.sweep.results import ResultRecord, ResultsStore
from taxcut.sweep.runner import RESULTS_FILE, _row, run_sweep

TESTS = Path(__file__).parent.parent


def result(primary: dict[str, float], stderr: dict[str, float], items: PerItem | None = None) -> EvaluationResult:
    return EvaluationResult(
        tasks={t: {"acc": v} for t, v in primary.items()},
        primary=primary,
        directions={t: True for t in primary},
        seconds=1.0,
        stderr={t: {"acc": e} for t, e in stderr.items()},
        primary_stderr=stderr,
        items=items,
    )


def test_item_scores_round_trip_merge_and_rounding():
    first = ItemScores.of([4, 0, 2], [1.0, 0.123456789, 7.0])
    assert first.items == (0, 2, 4) and first.values == (0.123457, 7.0, 1.0)  # sorted by key, 6 digits
    assert first.to_json() == {"items": [0, 2, 4], "values": [0.123457, 7.0, 1.0]}
    assert ItemScores.from_json(json.loads(json.dumps(first.to_json()))) == first
    both = first.merge(ItemScores.of([3, 1], [5.0, 6.0]))
    assert both.as_dict() == {0: 0.123457, 1: 6.0, 2: 7.0, 3: 5.0, 4: 1.0}
    with pytest.raises(TaxcutError, match="overlapping items cannot be merged"):
        first.merge(ItemScores.of([2], [0.0]))
    with pytest.raises(ValueError, match="an item appears twice"):
        ItemScores((1, 1), (0.0, 1.0))
    # a task kept on one side only is dropped from the merge: a part of its items would pass for all
    merged = PerItem(first, {"a": first, "b": first}).merge(PerItem(None, {"a": ItemScores.of([9], [1.0])}))
    assert merged.reward is None and set(merged.tasks) == {"a"} and len(merged.tasks["a"]) == 4


def test_paired_difference_is_the_error_of_the_per_item_differences():
    a = ItemScores.of(range(6), [1, 0, 1, 1, 0, 1])
    b = ItemScores.of(range(7), [1, 1, 1, 0, 0, 1, 1])  # item 6 is b's only: not compared
    mean, stderr, n = paired_difference(a, b)
    # differences 0, -1, 0, 1, 0, 0: mean 0, sample variance 2 / 5, error sqrt(2 / 5 / 6)
    assert (mean, n) == (0.0, 6)
    assert stderr == pytest.approx(math.sqrt(2 / 5 / 6))
    assert paired_difference(a, ItemScores.of([3], [0.0])) == (1.0, math.inf, 1)
    assert all(math.isnan(v) for v in paired_difference(a, ItemScores.of([10], [0.0]))[:2])


def test_mcnemar_exact_p_matches_a_hand_computation():
    # 10 items: 3 both right, 0 both wrong, 1 only a right, 6 only b right -> 7 disagreements
    a = ItemScores.of(range(10), [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    b = ItemScores.of(range(10), [1, 1, 1, 0, 1, 1, 1, 1, 1, 1])
    # P(X <= 1) for X ~ Binomial(7, 1/2) = (1 + 7) / 128; two-sided: 16 / 128
    assert mcnemar_p(a, b) == pytest.approx(16 / 128)
    assert mcnemar_p(a, a) == 1.0
    assert mcnemar_p(ItemScores.of([0, 1], [1, 0]), ItemScores.of([0, 1], [0, 1])) == 1.0  # min(1, 2 * 3/4)
    with pytest.raises(TaxcutError, match="needs yes/no"):
        mcnemar_p(ItemScores.of([0], [0.5]), ItemScores.of([0], [1.0]))


def test_paired_tax_error_matches_the_closed_form():
    # task mc: per-item outcomes known on both sides; task ppl: no item scores, its own error 0.03 as before
    sft_mc = ItemScores.of(range(6), [1, 1, 1, 0, 0, 1])
    cand_mc = ItemScores.of(range(6), [1, 0, 1, 1, 0, 1])
    baseline = result({"mc": 4 / 6, "ppl": 0.5}, {"mc": 0.19, "ppl": 0.02}, PerItem(None, {"mc": sft_mc}))
    candidate = result({"mc": 4 / 6, "ppl": 0.4}, {"mc": 0.19, "ppl": 0.03}, PerItem(None, {"mc": cand_mc}))
    closed_form = math.sqrt(2 / 5 / 6 + 0.03**2) / 2  # sqrt(se_paired(mc)^2 + se(ppl)^2) / T
    assert paired_tax_stderr(
        candidate.primary_stderr, ["mc", "ppl"], candidate.items.tasks, baseline.items.tasks
    ) == pytest.approx(closed_form)
    row = _row(ma_candidate(0.5), candidate, 0.5, baseline)
    assert row.tax_stderr == pytest.approx(closed_form)
    assert _row(ma_candidate(0.0), baseline, 0.0, baseline).tax_stderr == pytest.approx(0.02 / 2)  # ppl: unpaired
    unpaired = result({"mc": 4 / 6, "ppl": 0.4}, {"mc": 0.19, "ppl": 0.03})  # an old line: today's rule
    assert _row(ma_candidate(0.5), unpaired, 0.5, baseline).tax_stderr == pytest.approx(math.hypot(0.19, 0.03) / 2)


def test_results_lines_with_and_without_items_read(tmp_path):
    candidate = ma_candidate(0.2)
    plain = result({"mc": 0.5}, {"mc": 0.1})
    kept = result(
        {"mc": 0.5}, {"mc": 0.1}, PerItem(ItemScores.of([0, 1], [0.25, 2.5]), {"mc": ItemScores.of([0, 1], [0, 1])})
    )
    store = ResultsStore(tmp_path / RESULTS_FILE)
    for evaluation in (plain, kept):
        store.append(
            ResultRecord(
                candidate_id=candidate.id,
                candidate=candidate,
                result=evaluation,
                mean_alpha=0.2,
                sft="sft",
                aligned="aligned",
            )
        )
    lines = [json.loads(line) for line in (tmp_path / RESULTS_FILE).read_text().splitlines()]
    assert "items" not in lines[0]  # written only when kept: old readers see the same line as before
    assert lines[1]["items"] == {
        "reward": {"items": [0, 1], "values": [0.25, 2.5]},
        "tasks": {"mc": {"items": [0, 1], "values": [0.0, 1.0]}},
    }
    read = store.records()
    assert read[0].result.items is None and read[0].result == plain
    assert read[1].result == kept
    bad = dict(lines[1], items={"tasks": {"mc": {"items": [0, 0], "values": [0, 1]}}})
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(TaxcutError, match=r"bad.jsonl, line 1: not a result record"):
        ResultsStore(tmp_path / "bad.jsonl").records()


def test_measurement_merges_and_round_trips_items():
    def measured(keys: list[int]) -> Measurement:
        return Measurement(None, {}, {}, {}, items=PerItem(ItemScores.of(keys, keys), {}))

    merged = measured([0, 2]).merge(measured([1]))
    assert merged.items.reward.as_dict() == {0: 0.0, 1: 1.0, 2: 2.0}
    assert Measurement.from_json(json.loads(json.dumps(merged.to_json()))).items == merged.items
    assert measured([0]).merge(Measurement(None, {}, {}, {})).items is None  # one side kept none
    assert "items" not in Measurement(None, {}, {}, {}).to_json()


def write_spec(tmp_path: Path, pair, tasks=("mc", "text")) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 10)))
    (data / "mc.jsonl").write_text(
        "".join(
            json.dumps({"context": f"w{i}", "choices": [f"w{i + 1}", f"w{i + 7}"], "answer": 0}) + "\n"
            for i in range(4, 12)
        )
    )
    (data / "text.jsonl").write_text(
        "".join(json.dumps({"text": f"w{i} w{i + 1} w{i + 2}"}) + "\n" for i in range(4, 8))
    )
    spec = {
        "sft": str(pair[0]),
        "aligned": str(pair[1]),
        "out": "sweep-out",
        "candidates": {"grid": [0.0, 1.0]},
        "evaluation": {
            "reward": {
                "prompts": "data/prompts.jsonl",
                "function": f"{TESTS / 'rewards.py'}:first_word_number",
                "max_new_tokens": 3,
                "samples_per_prompt": 2,
                "do_sample": True,
                "seed": 3,
            },
            "tasks": [
                task
                for task in (
                    {"name": "mc", "type": "multiple_choice", "path": "data/mc.jsonl"},
                    {"name": "text", "type": "perplexity", "path": "data/text.jsonl"},
                )
                if task["name"] in tasks
            ],
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_sweep_records_items_and_pairs_the_tax_error(llama_pair, tmp_path):
    spec_path = write_spec(tmp_path, llama_pair)
    hashes = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "data").iterdir()}
    report = run_sweep(SweepSpec.from_yaml(spec_path), progress=False)
    lines = [json.loads(line) for line in (tmp_path / "sweep-out" / RESULTS_FILE).read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        reward, mc = line["items"]["reward"], line["items"]["tasks"]["mc"]
        assert reward["items"] == list(range(12))  # prompt i, sample j -> i * 2 + j
        assert sum(reward["values"]) / 12 == pytest.approx(line["reward"]["reward"], abs=1e-5)
        assert mc["items"] == list(range(8)) and set(mc["values"]) <= {0.0, 1.0}
        assert sum(mc["values"]) / 8 == pytest.approx(line["primary"]["mc"])
        text = line["items"]["tasks"]["text"]  # each text's NLL over the mean token count: their mean is the nll
        assert text["items"] == list(range(4))
        assert sum(text["values"]) / 4 == pytest.approx(line["primary"]["text"], rel=5e-6)
    sft, aligned = report.rows
    # the SFT row: both tasks paired with themselves are exact
    assert (sft.tax, sft.tax_stderr) == (0.0, 0.0)
    paired = [
        paired_difference(
            ItemScores.from_json(lines[1]["items"]["tasks"][name]),
            ItemScores.from_json(lines[0]["items"]["tasks"][name]),
        )[1]
        for name in ("mc", "text")
    ]
    assert aligned.tax_stderr == pytest.approx(math.hypot(*paired) / 2)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "data").iterdir()} == hashes


def test_with_item_scores_on_every_task_the_sft_row_has_tax_error_zero(llama_pair, tmp_path):
    report = run_sweep(SweepSpec.from_yaml(write_spec(tmp_path, llama_pair, tasks=("mc",))), progress=False)
    sft, aligned = report.rows
    assert (sft.tax, sft.tax_stderr) == (0.0, 0.0)
    assert aligned.tax_stderr > 0.0 or aligned.primary == sft.primary


def test_halving_stages_items_add_up_to_the_full_runs(llama_pair, tmp_path):
    from taxcut.evaluation.loading import load_causal_lm, load_tokenizer
    from taxcut.evaluation.subset import DataPart
    from taxcut.evaluation.suite import EvaluationSuite

    suite = EvaluationSuite.from_spec(SweepSpec.from_yaml(write_spec(tmp_path, llama_pair)).evaluation)
    model, tokenizer = load_causal_lm(llama_pair[1]), load_tokenizer(llama_pair[1])
    first = suite.measure(model, tokenizer, DataPart(0.0, 0.5))
    assert 0 < len(first.items.reward) < 12 and 0 < len(first.items.tasks["mc"]) < 8
    staged = first.merge(suite.measure(model, tokenizer, DataPart(0.5, 1.0)))
    assert staged.items == suite.measure(model, tokenizer).items  # same keys, same scores (sampled rewards too)
