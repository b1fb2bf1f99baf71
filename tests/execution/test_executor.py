"""The in-process executor, the executor spec, Ray as an optional extra, and the sampling's shards in any order."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from taxcut import TaxcutError
from taxcut.cli import main
from taxcut.execution import LocalExecutor, open_executor
from taxcut.spec.execution import ExecutorSpec, RaySettings
from taxcut.spec.sweep import SweepSpec

TESTS = Path(__file__).parents[1]


@dataclass
class Counting:
    """A work that counts its setups (in this process: the executor keeps the object itself)."""

    offset: int
    setups: list = field(default_factory=list, compare=False)

    def setup(self):
        self.setups.append(self.offset)

        def run(item: int) -> int:
            if item < 0:
                raise TaxcutError(f"item {item} is negative")
            return item + self.offset

        return run


def test_the_local_executor_keeps_its_setup_while_the_work_is_equal():
    executor = LocalExecutor()
    work = Counting(10)
    assert list(executor.map(work, [1, 2, 3])) == [(1, 11), (2, 12), (3, 13)]
    assert list(executor.map(Counting(10, work.setups), [4])) == [(4, 14)]  # equal work: no second setup
    assert work.setups == [10]
    assert list(executor.map(Counting(20, work.setups), [4])) == [(4, 24)]
    assert work.setups == [10, 20]
    assert list(executor.map(Counting(30, work.setups), [])) == [] and work.setups == [10, 20]  # nothing: no setup
    with pytest.raises(TaxcutError, match="item -1 is negative"):
        list(executor.map(Counting(20), [1, -1]))
    assert len(executor.timings.busy) == 6 and executor.timings.overhead() == 0.0


def test_ray_is_an_optional_extra(llama_pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if taxcut[ray] were not installed
    with pytest.raises(TaxcutError, match=r"^the Ray executor needs the extra: pip install 'taxcut\[ray\]'$"):
        open_executor(ExecutorSpec(ray=RaySettings()))
    assert isinstance(open_executor(ExecutorSpec()), LocalExecutor)
    spec = tmp_path / "sweep.yaml"
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "w4 w5"}) + "\n")
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "w4 w5 w6"}) + "\n")
    spec.write_text(
        yaml.safe_dump(
            {
                "sft": str(llama_pair[0]),
                "aligned": str(llama_pair[1]),
                "out": "out",
                "candidates": {"grid": [0.5]},
                "evaluation": {
                    "reward": {"prompts": "prompts.jsonl", "function": f"{TESTS / 'rewards.py'}:first_word_number"},
                    "tasks": [{"name": "text", "type": "perplexity", "path": "text.jsonl"}],
                },
            }
        )
    )
    assert main(["sweep", str(spec), "--ray", "--no-progress"]) == 2
    assert capsys.readouterr().err == "taxcut: error: the Ray executor needs the extra: pip install 'taxcut[ray]'\n"
    assert not (tmp_path / "out").exists()
    assert (
        main(
            [
                "sample",
                "--model",
                str(llama_pair[1]),
                "--prompts",
                str(tmp_path / "prompts.jsonl"),
                "--reward-function",
                f"{TESTS / 'rewards.py'}:first_word_number",
                "--keep",
                "1",
                "--out",
                str(tmp_path / "fit.jsonl"),
                "--ray",
                "auto",
            ]
        )
        == 2
    )
    assert "pip install 'taxcut[ray]'" in capsys.readouterr().err


def test_the_executor_section_is_checked(llama_pair, tmp_path):
    data = {
        "sft": str(llama_pair[0]),
        "aligned": str(llama_pair[1]),
        "out": str(tmp_path / "out"),
        "evaluation": {
            "reward": {"prompts": "p.jsonl", "function": "m:f"},
            "tasks": [{"name": "t", "type": "perplexity", "path": "t.jsonl"}],
        },
    }
    spec = SweepSpec.model_validate(
        {**data, "executor": {"ray": {"address": "auto", "workers": 4, "gpus_per_worker": 1}, "sources": "host"}}
    )
    assert spec.executor.ray.workers == 4 and spec.executor.sources == "host"
    assert SweepSpec.model_validate(data).executor.ray is None  # in-process by default
    path = tmp_path / "s.yaml"
    for bad, field_name in (
        ({"ray": {"worker": 2}}, "worker"),
        ({"ray": {"workers": 0}}, "workers"),
        ({"sources": "disk"}, "sources"),
    ):
        path.write_text(yaml.safe_dump({**data, "executor": bad}))
        with pytest.raises(TaxcutError, match=field_name):
            SweepSpec.from_yaml(path)


class Reversed(LocalExecutor):
    """Finishes the items last to first, as a cluster may."""

    def map(self, work, items):
        return reversed(list(super().map(work, items)))


def test_the_fit_set_does_not_depend_on_the_order_shards_finish(llama_pair, tmp_path):
    from taxcut.evaluation.generation import GenerationSettings
    from taxcut.hma.sample import sample_fit_set

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 11)))
    settings = GenerationSettings(do_sample=True, max_new_tokens=3, seed=5)
    options = {
        "n": 2,
        "keep": 10,
        "reward_function": f"{TESTS / 'rewards.py'}:first_word_number",
        "settings": settings,
        "device": "cpu",
        "shard_size": 3,
    }
    in_order = sample_fit_set(llama_pair[1], prompts, tmp_path / "a.jsonl", **options)
    backwards = sample_fit_set(llama_pair[1], prompts, tmp_path / "b.jsonl", executor=Reversed(), **options)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes() and in_order == backwards
    assert len(in_order) == 10  # 7 prompts x 2 samples, the best 10
