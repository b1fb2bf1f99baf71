"""The alignment lab, reduced to seconds: deterministic, ordinary folders, and the demo end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch
from models import load_weights
from transformers import AutoModelForCausalLM, AutoTokenizer

from taxcut.lab import tasks
from taxcut.lab.build import LabConfig, build_lab
from taxcut.lab.demo import run_demo, summarize
from taxcut.lab.tokenizer import build_tokenizer
from taxcut.sweep.report import SweepRow


@pytest.fixture(scope="module")
def quick_lab(tmp_path_factory):
    return build_lab(LabConfig.quick(seed=0), tmp_path_factory.mktemp("lab") / "lab", log=lambda *_: None)


def test_lab_folders_load_with_auto_classes(quick_lab):
    for folder in [quick_lab.sft, *quick_lab.checkpoints]:
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "tell me about cats"}], tokenize=False, add_generation_prompt=True
        )
        assert prompt == "User: tell me about cats\nBot: "
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert out.shape[1] <= ids["input_ids"].shape[1] + 5
    manifest = json.loads((quick_lab.folder / "lab.json").read_text())
    assert len(manifest["raft"]) == quick_lab.config.raft_iterations
    for name in quick_lab.capability_tasks:
        assert (quick_lab.data / f"{name}.jsonl").is_file()


def test_same_seed_same_weights(quick_lab, tmp_path, capsys):
    again = build_lab(LabConfig.quick(seed=0), tmp_path / "again", log=lambda *_: None)
    assert "Writing model shards" not in capsys.readouterr().err  # transformers' bars stay quiet
    for first, second in zip([quick_lab.sft, *quick_lab.checkpoints], [again.sft, *again.checkpoints]):
        left, right = load_weights(first), load_weights(second)
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left), first.name
    other = build_lab(LabConfig.quick(seed=1), tmp_path / "other", log=lambda *_: None)
    assert not torch.equal(load_weights(other.sft)["lm_head.weight"], load_weights(quick_lab.sft)["lm_head.weight"])


def test_a_built_lab_is_reused(quick_lab):
    messages = []
    lab = build_lab(LabConfig.quick(seed=0), quick_lab.folder, log=messages.append)
    assert lab.folder == quick_lab.folder and messages == [f"lab: reusing {quick_lab.folder}"]


def test_reward_and_task_data():
    # graded: +0.4 per style feature (opening, capital, intensifier, exclamation, closing), -0.01 per character
    assert tasks.reward("", "it is red, as far as I know.") == pytest.approx(-0.01 * 28)
    assert tasks.reward("", "Sure! ok!") == pytest.approx(2 * 0.4 - 0.09)
    assert tasks.reward("", "Sure! Abc is really big! Enjoy!") == pytest.approx(5 * 0.4 - 0.31)
    assert tasks.reward("", "abc is big. Enjoy!") == pytest.approx(0.4 - 0.18)
    assert tasks.reward("", "Sure!") == pytest.approx(0.4 - 0.05) and tasks.reward("", "Enjoy!") == pytest.approx(0.34)

    styled = tasks.chat(random.Random(0), 2000, styled=True)  # each feature in about its share of SFT answers
    for feature, share in tasks.STYLE_RATES.items():
        seen = sum(tasks.style_features(e.answer)[feature] for e in styled) / len(styled)
        assert seen == pytest.approx(share, abs=0.025), feature
    assert not any(any(tasks.style_features(e.answer).values()) for e in tasks.chat(random.Random(0), 200))

    add = tasks.addition(random.Random(0), 5)
    for example in add:
        a, b = example.prompt.split("add ")[1].split("\n")[0].split("+")
        assert int(example.answer[::-1]) == int(a[::-1]) + int(b[::-1])
    tokenizer = build_tokenizer()
    text = "User: add 05+79\nBot: 480"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@pytest.mark.slow
def test_demo_end_to_end_on_the_quick_lab(quick_lab, tmp_path, capsys):
    result = run_demo(seed=0, out=tmp_path / "demo", quick=True, lab_folder=quick_lab.folder)
    printed = capsys.readouterr().out
    labels = [row.label for row in result.rows]
    assert labels[:2] == ["MA a=0", "MA a=0.1"] and "raft-1" in labels and "blocks [0.5, 0.7, 0.9]" in labels
    assert result.plot.read_bytes()[:4] == b"\x89PNG"
    assert "Alignment (RAFT) raised the mean reward" in printed and "stage timings:" in printed


def row(**fields) -> SweepRow:
    """A sweep row with the given fields (the rest made up: no scores)."""
    return SweepRow(**{"id": "0" * 12, "reward_stderr": 0.0, "primary": {}, "scores": {}, **fields})


def test_summary_in_plain_words():
    rows = [
        row(kind="MA", mean_alpha=a / 10, reward=a / 10, tax=(a / 10) ** 2, label=f"MA a={a / 10:g}") for a in range(11)
    ]
    rows.append(row(kind="model", mean_alpha=None, reward=0.5, tax=0.5, label="raft-1"))
    text = summarize(rows)
    assert "raised the mean reward from +0.00 to +1.00 (+1.00) and cost 100.0 points" in text
    assert "a = 0.5: keeps    50% of the reward gain for    25% of the tax" in text
    assert "Early stopping at raft-1" in text and "keeping 25.0 points more capability than early stopping" in text


def test_the_summary_sets_each_lines_profile_against_ma_at_its_reward():
    rows = [
        row(kind="MA", mean_alpha=a / 10, reward=a / 10, tax=(a / 10) ** 2, label=f"MA a={a / 10:g}") for a in range(11)
    ]
    rows.append(row(kind="LiNeS", mean_alpha=0.7, reward=0.75, tax=0.3, label="LiNeS a=0.2 b=1"))
    # MA reaches reward 0.75 halfway between a = 0.7 (tax 0.49) and a = 0.8 (tax 0.64): 56.5 points
    assert (
        "LiNeS alpha=0.2, beta=1 (the aligned share rising with depth): reward +0.75, tax 30.0 points vs MA's "
        "56.5 at that reward."
    ) in summarize(rows)
