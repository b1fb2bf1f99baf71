"""lm-eval tasks measured document by document (halving's nested subsets, per-document scores for paired
comparisons), and the per-item scores of BLEU and perplexity tasks."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import sacrebleu
import yaml
from models import VOCAB, build_successor_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from taxcut import TaxcutError
from taxcut.evaluation.paired import ItemScores, paired_difference
from taxcut.evaluation.stats import CorpusBleu
from taxcut.evaluation.subset import DataPart
from taxcut.evaluation.tasks import BleuTask, PerplexityTask
from taxcut.spec.evaluation import EvaluationSpec
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.noise import paired_tax_stderr
from taxcut.sweep.runner import RESULTS_FILE, run_sweep

pytest.importorskip("lm_eval", reason="installed by make test (extra [lmeval])")
from taxcut.evaluation.lmeval import LmEvalTask
from tests.sweep.test_paired_sweeps import full_records  # the same comparison of full-data records

TESTS = Path(__file__).parent.parent
SUCCESSOR_LOGPROB = 10.0 - math.log(math.exp(10.0) + VOCAB - 1)  # log p of the forced next token
WRONG_LOGPROB = 0.0 - math.log(math.exp(10.0) + VOCAB - 1)
ANSWERS = [0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1]  # the successor model picks choice 0 (the next word) every time


@pytest.fixture(scope="module")
def successor(tmp_path_factory):
    folder = build_successor_model(tmp_path_factory.mktemp("successor") / "model")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), PreTrainedTokenizerFast.from_pretrained(folder)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_task(folder: Path, answers: list[int], *, name: str = "tiny_mc", extra: str = "") -> Path:
    """A local multiple-choice lm-eval task (``dataset_path: json``): document i asks for the word after w{i+4}."""
    folder.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(
        folder / f"{name}.jsonl",
        [
            {"context": f"w{i}", "choices": [f"w{i + 1}", f"w{i + 7}"], "answer": answer}
            for i, answer in enumerate(answers, start=4)
        ],
    )
    path = folder / f"{name}.yaml"
    path.write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n'
        "    higher_is_better: true\n  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n" + extra
    )
    return path


def digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())).hexdigest()


def test_lm_eval_documents_merge_into_the_full_score_with_per_document_items(successor, tmp_path):
    before = digest(write_task(tmp_path / "task", ANSWERS).parent)
    task = LmEvalTask("lm", str(tmp_path / "task" / "tiny_mc.yaml"), batch_size=5)
    assert len(task.records) == 12 and task.primary_metric == "acc_norm" and task.higher_is_better
    full, full_items = task.measure_items(*successor)
    right = [float(answer == 0) for answer in ANSWERS]
    assert full["acc"].value == full["acc_norm"].value == sum(right) / 12 == 7 / 12
    assert full["acc"].stderr == pytest.approx(math.sqrt(7 / 12 * 5 / 12 / 12), abs=1e-12)  # binomial, not NaN
    assert full_items == ItemScores(tuple(range(12)), tuple(right))

    parts = [DataPart(0.0, 0.25, 3), DataPart(0.25, 0.5, 3), DataPart(0.5, 1.0, 3)]  # halving's stages
    chosen = [part.items("task:lm", 12) for part in parts]
    assert sorted(i for c in chosen for i in c) == list(range(12)) and all(chosen)
    measured = [task.measure_items(*successor, items) for items in chosen]
    for items, (_, scores) in zip(chosen, measured):
        assert scores.items == tuple(items) and scores.values == tuple(right[i] for i in items)  # doc ids kept
    merged_stats, merged_items = measured[0]
    for stats, scores in measured[1:]:
        merged_stats = {m: s.merge(stats[m]) for m, s in merged_stats.items()}
        merged_items = merged_items.merge(scores)
    assert {m: (s.value, s.stderr) for m, s in merged_stats.items()} == {
        m: (s.value, s.stderr) for m, s in full.items()
    }
    assert merged_items == full_items

    # the tax's paired error: the per-document differences to an SFT model that got every document right
    sft = ItemScores.of(range(12), [1.0] * 12)
    wrong = 5
    closed = math.sqrt(wrong * (12 - wrong) / (12 * 12 * 11))  # sd of the 0/-1 differences over sqrt(n)
    assert paired_difference(full_items, sft) == pytest.approx((-5 / 12, closed, 12))
    assert paired_tax_stderr({"lm": full["acc_norm"].stderr}, ["lm"], {"lm": full_items}, {"lm": sft}) == pytest.approx(
        closed, abs=1e-12
    )
    assert digest(tmp_path / "task") == before  # the task's files are only read


def test_few_shot_examples_of_a_document_do_not_depend_on_the_other_documents(successor, tmp_path):
    path = write_task(tmp_path, ANSWERS, extra="num_fewshot: 3\nfewshot_split: test\n")
    task = LmEvalTask("lm", str(path))
    contexts = {}
    for documents in (None, [2, 9], [9]):
        samples = task._run(*successor, documents)["samples"]["tiny_mc"]
        for sample in samples:
            contexts.setdefault(sample["doc_id"], set()).add(sample["arguments"][0][0])
    assert all(len(seen) == 1 for seen in contexts.values())  # one prompt per document, in any subset
    assert contexts[9].pop().count("\n\n") == 3  # with its three examples


def test_a_primary_metric_that_is_no_mean_is_measured_in_full_only(successor, tmp_path):
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": "w0 w1 w2 w3"}, {"text": "w1 w9"}])
    (tmp_path / "ppl.yaml").write_text(
        f"task: tiny_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
    )
    task = LmEvalTask("ppl", str(tmp_path / "ppl.yaml"))
    assert task.primary_metric == "word_perplexity" and not task.higher_is_better
    stats, items = task.measure_items(*successor)
    assert items is None and stats["word_perplexity"].value > 1 and math.isnan(stats["word_perplexity"].stderr)
    with pytest.raises(
        TaxcutError,
        match=r"lm-eval task 'ppl': its word_perplexity is not a mean of per-document "
        r"scores.*'fidelity: full'",
    ):
        task.measure_items(*successor, [0])


def write_sweep(folder: Path, pair, task: Path, fidelity: dict) -> Path:
    """A greedy sweep of MA 0, 0.5 and 1: a reward on 16 prompts, and the lm-eval ``task``."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = write_jsonl(folder / "prompts.jsonl", [{"prompt": f"w{i} w{i + 1}"} for i in range(4, 20)])
    spec = {
        "sft": str(pair[0]),
        "aligned": str(pair[1]),
        "out": str(folder / "out"),
        "candidates": {"grid": [0.0, 0.5, 1.0]},
        "evaluation": {
            "reward": {
                "prompts": str(prompts),
                "function": f"{TESTS / 'rewards.py'}:first_word_number",
                "max_new_tokens": 2,
            },
            "tasks": [{"name": "lm", "type": "lm_eval", "task": str(task)}],
            **fidelity,
        },
        "device": "cpu",
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_an_lm_eval_task_under_halving_equals_the_full_run(llama_pair, tmp_path):
    task = write_task(tmp_path / "task", [i % 2 for i in range(32)])
    EvaluationSpec.model_validate(
        {"tasks": [{"name": "lm", "type": "lm_eval", "task": str(task)}], "fidelity": "halving"}
    )  # no longer refused
    full_report = run_sweep(SweepSpec.from_yaml(write_sweep(tmp_path / "full", llama_pair, task, {})), progress=False)
    halving = write_sweep(tmp_path / "halving", llama_pair, task, {"fidelity": "halving", "halving": {"start": 0.25}})
    run_sweep(SweepSpec.from_yaml(halving), progress=False)
    full = full_records(tmp_path / "full" / "out" / RESULTS_FILE)
    staged = full_records(tmp_path / "halving" / "out" / RESULTS_FILE)
    stages = [json.loads(line) for line in (tmp_path / "halving" / "out" / RESULTS_FILE).read_text().splitlines()]
    assert {r.get("share", 1.0) for r in stages} >= {0.25, 0.5, 1.0}  # measured in parts
    assert len(full) == 3 and 2 <= len(staged) <= 3
    for candidate_id, record in staged.items():
        assert len(record["items"]["tasks"]["lm"]["items"]) == 32
        assert record == full[candidate_id]  # json floats: equal here is equal bits
    scores = [v for r in full.values() for v in r["items"]["tasks"]["lm"]["values"]]
    assert set(scores) == {0.0, 1.0}  # the documents' outcomes vary: the comparison is not of constants

    sft_id = full_report.rows[0].id
    sft = ItemScores.from_json(full[sft_id]["items"]["tasks"]["lm"])
    for row in full_report.rows[1:]:  # the tax's error pairs each candidate's documents with the SFT model's
        mine = ItemScores.from_json(full[row.id]["items"]["tasks"]["lm"])
        assert row.tax_stderr == pytest.approx(paired_difference(mine, sft)[1], abs=1e-12)


def test_bleu_keeps_each_records_sentence_bleu(successor, tmp_path):
    records = [
        {"prompt": "w1", "reference": "w2 w3 w4 w5"},
        {"prompt": "w10", "references": ["w11 w12 w40 w41"]},
        {"prompt": "w20", "reference": "w21 w30"},
    ]
    task = BleuTask("bleu", write_jsonl(tmp_path / "bleu.jsonl", records), max_new_tokens=4)
    stats, items = task.measure_items(*successor)
    outputs = ["w2 w3 w4 w5", "w11 w12 w13 w14", "w21 w22 w23 w24"]  # the successor model's greedy outputs
    references = [["w2 w3 w4 w5"], ["w11 w12 w40 w41"], ["w21 w30"]]
    sentence = [sacrebleu.sentence_bleu(o, r).score / 100 for o, r in zip(outputs, references)]
    assert items.items == (0, 1, 2) and items.values == pytest.approx(sentence, rel=5e-6)
    assert items.values[0] == 1.0 and 0 < items.values[2] < items.values[1] < 1
    corpus = sacrebleu.corpus_bleu(outputs, [[r[0] for r in references]]).score / 100
    assert stats["bleu"].value == pytest.approx(corpus, abs=1e-12)  # the records' statistics sum to the score
    first, second = task.measure_items(*successor, [0, 2]), task.measure_items(*successor, [1])
    assert first[1].merge(second[1]) == items
    assert isinstance(stats["bleu"], CorpusBleu)
    assert sorted(first[0]["bleu"].merge(second[0]["bleu"]).items) == sorted(stats["bleu"].items)


def test_perplexity_keeps_each_texts_nll_over_the_mean_length(successor, tmp_path):
    texts = [{"text": "w0 w1 w2 w3"}, {"text": "w1 w9"}]  # 4 tokens all forced right; 2 tokens both wrong
    task = PerplexityTask("ppl", write_jsonl(tmp_path / "ppl.jsonl", texts))
    stats, items = task.measure_items(*successor)
    nll = -(4 * SUCCESSOR_LOGPROB + 2 * WRONG_LOGPROB) / 6
    assert stats["nll"].value == pytest.approx(nll, abs=1e-5)
    assert items.values == pytest.approx([-4 * SUCCESSOR_LOGPROB / 3, -2 * WRONG_LOGPROB / 3], rel=5e-6)
    assert sum(items.values) / len(items) == pytest.approx(stats["nll"].value, rel=5e-6)  # mean = the task's nll
    first, second = task.measure_items(*successor, [1]), task.measure_items(*successor, [0])
    assert first[1].merge(second[1]) == items  # the same per-text scores in any subset
    assert first[0]["nll"].merge(second[0]["nll"]).value == pytest.approx(stats["nll"].value, abs=1e-12)
    by_ppl = PerplexityTask("ppl", tmp_path / "ppl.jsonl", primary_metric="perplexity")
    assert by_ppl.measure_items(*successor)[1] is None  # exp of a ratio: no per-item form
