"""Work on a local Ray cluster of 2 CPU workers: a quick-lab sweep (grid, HMA fits, search) equals the in-process
one record for record, a killed worker is replaced without losing or repeating a candidate, a killed driver resumes
without redoing one; the sharded fit set and a greedy soup equal the in-process ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from taxcut.execution import LocalExecutor
from taxcut.lab.build import LabConfig, build_lab
from taxcut.spec.execution import RaySettings
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep.runner import RESULTS_FILE, run_sweep

ray = pytest.importorskip("ray")
from taxcut.execution.ray_executor import RayExecutor  # noqa: E402

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parents[1]
SLOW_REWARD = f"{TESTS / 'rewards.py'}:slow_first_word_number"  # 0.05 s per response: a candidate takes a while


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, address="local", logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return build_lab(LabConfig.quick(seed=0), tmp_path_factory.mktemp("ray") / "lab", log=lambda *_: None)


def lab_spec(lab, folder: Path, *, reward: str = "taxcut.lab.tasks:reward", **extra) -> Path:
    """A quick-lab sweep spec file in ``folder`` (results in ``folder/out``)."""
    data = {
        "sft": str(lab.sft),
        "aligned": str(lab.aligned),
        "out": str(folder / "out"),
        "candidates": {
            "grid": [0.0, 0.25, 0.5, 0.75, 1.0],
            "block_patterns": [[0.2, 0.5, 0.8]],
            "models": [str(lab.checkpoints[0])],
        },
        "evaluation": {
            "reward": {
                "prompts": str(lab.data / "chat_prompts.jsonl"),
                "function": reward,
                "max_new_tokens": 8,
                "do_sample": True,
                "samples_per_prompt": 2,
                "seed": 3,
            },
            "tasks": [
                {"name": name, "type": "generation", "path": str(lab.data / f"{name}.jsonl"), "max_new_tokens": 4}
                for name in lab.capability_tasks
            ],
        },
        "device": "cpu",
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(data))
    return folder / "sweep.yaml"


def records(results: Path) -> list[dict]:
    """The results file's records by candidate id, without what depends on timing."""
    rows = []
    for line in results.read_text().splitlines():
        row = {k: v for k, v in json.loads(line).items() if k not in ("seconds", "finished")}
        if isinstance(row.get("cost"), dict):
            row["cost"] = {k: v for k, v in row["cost"].items() if k != "seconds"}
        rows.append(row)
    return sorted(rows, key=lambda r: r["candidate_id"])


def test_ray_sweep_equals_the_in_process_sweep(cluster, lab, tmp_path):
    pytest.importorskip("optuna")
    fit_set = tmp_path / "fit.jsonl"  # a small fit set, so that HMA fits run on the workers too
    from taxcut.hma.sample import sample_fit_set

    sample_fit_set(
        lab.aligned,
        lab.data / "chat_prompts.jsonl",
        fit_set,
        n=2,
        keep=8,
        reward_function="taxcut.lab.tasks:reward",
        device="cpu",
    )
    extra = {
        "search": {"budget": 4, "batch": 2},
        "candidates": {
            "grid": [0.0, 0.5, 1.0],
            "block_patterns": [[0.2, 0.5, 0.8]],
            "models": [str(lab.checkpoints[0])],
            "hma": {"data": str(fit_set), "mean_alphas": [0.3, 0.7], "lr": 0.2},
        },
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as a worker of 1 CPU
    try:
        with LocalExecutor() as executor:
            local = run_sweep(
                SweepSpec.from_yaml(lab_spec(lab, tmp_path / "local", **extra)), progress=False, executor=executor
            )
    finally:
        torch.set_num_threads(threads)
    spec = SweepSpec.from_yaml(lab_spec(lab, tmp_path / "ray", **extra, executor={"ray": {"workers": 2}}))
    with RayExecutor(spec.executor.ray) as executor:
        remote = run_sweep(spec, progress=False, executor=executor)
        assert executor.workers == 2 and len(set(executor.pids())) == 2
    kinds = [row.kind for row in remote.rows]
    assert kinds.count("HMA") == 2 and kinds.count("search") == 4 and kinds.count("model") == 1
    mine, theirs = records(tmp_path / "local" / "out" / RESULTS_FILE), records(tmp_path / "ray" / "out" / RESULTS_FILE)
    assert len(theirs) == len({r["candidate_id"] for r in theirs})  # every candidate once
    assert theirs == mine
    assert [(r.id, r.reward, r.tax) for r in remote.rows] == [(r.id, r.reward, r.tax) for r in local.rows]
    fitted = sorted((tmp_path / "ray" / "out" / "hma").glob("*.yaml"))
    assert [p.name for p in fitted] == [p.name for p in sorted((tmp_path / "local" / "out" / "hma").glob("*.yaml"))]
    for path in fitted:
        assert (
            yaml.safe_load(path.read_text())["alphas"]
            == yaml.safe_load((tmp_path / "local" / "out" / "hma" / path.name).read_text())["alphas"]
        )


def test_a_worker_killed_mid_sweep_is_replaced(cluster, lab, tmp_path):
    spec = SweepSpec.from_yaml(lab_spec(lab, tmp_path, reward=SLOW_REWARD))
    results = tmp_path / "out" / RESULTS_FILE
    with RayExecutor(RaySettings(workers=2)) as executor:
        victim = executor.pids()[0]
        killed = threading.Event()

        def kill_when_busy():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not (results.exists() and results.read_text().count("\n") >= 1):
                time.sleep(0.01)
            os.kill(victim, signal.SIGKILL)  # both workers are evaluating: the victim holds a candidate
            killed.set()

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        report = run_sweep(spec, progress=False, executor=executor)
        killer.join()
        assert killed.is_set() and executor.replaced == 1 and victim not in executor.pids()
    ids = [json.loads(line)["candidate_id"] for line in results.read_text().splitlines()]
    assert sorted(ids) == sorted(row.id for row in report.rows) and len(ids) == len(set(ids)) == 7


def test_a_killed_driver_resumes_without_redoing_a_candidate(cluster, lab, tmp_path):
    address = ray.get_runtime_context().gcs_address  # the driver joins this cluster, as one started by `ray start`
    path = lab_spec(lab, tmp_path, reward=SLOW_REWARD, executor={"ray": {"address": address, "workers": 2}})
    results = tmp_path / "out" / RESULTS_FILE
    process = subprocess.Popen(
        [sys.executable, "-m", "taxcut.cli", "sweep", str(path), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the sweep finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)  # its workers die with it (Ray ends the actors of a dead driver)
    process.wait()
    before = results.read_bytes()
    finished = [json.loads(line)["candidate_id"] for line in before.decode().splitlines() if line.endswith("}")]
    assert 2 <= len(finished) < 7

    run_sweep(SweepSpec.from_yaml(path), progress=False)  # on this test's cluster (Ray is already up)
    after = results.read_bytes()
    assert after.startswith(before)  # nothing already written is lost or rewritten
    ids = [json.loads(line)["candidate_id"] for line in after.decode().splitlines() if line.endswith("}")]
    assert len(ids) == len(set(ids)) == 7  # every candidate, none twice


def test_sampling_on_ray_writes_the_in_process_fit_set(cluster, lab, tmp_path):
    from taxcut.hma.sample import sample_fit_set

    options = {"n": 2, "keep": 12, "reward_function": "taxcut.lab.tasks:reward", "device": "cpu", "shard_size": 3}
    prompts = lab.data / "chat_prompts.jsonl"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sample_fit_set(lab.aligned, prompts, tmp_path / "local.jsonl", **options)
    finally:
        torch.set_num_threads(threads)
    with RayExecutor(RaySettings(workers=2)) as executor:
        sample_fit_set(lab.aligned, prompts, tmp_path / "ray.jsonl", executor=executor, **options)
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_a_greedy_soup_scored_on_ray_equals_the_in_process_one(cluster, trio, tmp_path):
    from taxcut.spec.evaluation import EvaluationSpec
    from taxcut.tuning.greedy_soup import greedy_soup

    text = tmp_path / "text.jsonl"
    text.write_text(
        "".join(json.dumps({"text": " ".join(f"w{j}" for j in range(i, i + 6))}) + "\n" for i in range(4, 14))
    )
    evaluation = EvaluationSpec.model_validate({"tasks": [{"name": "text", "type": "perplexity", "path": str(text)}]})
    _, models = trio
    local = greedy_soup(models, evaluation, "text.nll", device="cpu")
    with RayExecutor(RaySettings(workers=2)) as executor:
        remote = greedy_soup(models, evaluation, "text.nll", device="cpu", executor=executor)
    assert remote == local and len(local.individual) == 3 and len(local.trials) == 2
