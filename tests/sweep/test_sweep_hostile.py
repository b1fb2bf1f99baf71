"""A sweep's folder under a careless or hostile user: one writer at a time, reports never written through links,
and successive halving's work bounded (no empty stage, no endless stages)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from taxcut.errors import TaxcutError
from taxcut.evaluation.measurement import Measurement
from taxcut.evaluation.stats import Mean
from taxcut.io.publish import hold_lock
from taxcut.spec.candidates import ma_candidate
from taxcut.spec.sweep import SweepSpec
from taxcut.sweep import runner
from taxcut.sweep.halving import HalvingSettings, successive_halving
from taxcut.sweep.runner import RESULTS_FILE, SWEEP_LOCK, run_sweep

TESTS = Path(__file__).parent.parent
REPORTS = ["sweep.yaml", "candidates.csv", "candidates.md", "front.png"]


def write_spec(
    tmp_path: Path,
    pair,
    *,
    grid=(0.0, 1.0),
    prompts: int = 8,
    items: int = 8,
    function: str = "first_word_number",
    halving: dict | None = None,
) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"w{i} w{i + 1}"}) + "\n" for i in range(4, 4 + prompts))
    )
    (data / "mc.jsonl").write_text(
        "".join(
            json.dumps({"context": f"w{i}", "choices": [f"w{i + 1}", f"w{i + 7}"], "answer": 0}) + "\n"
            for i in range(4, 4 + items)
        )
    )
    evaluation = {
        "reward": {
            "prompts": "data/prompts.jsonl",
            "function": f"{TESTS / 'rewards.py'}:{function}",
            "max_new_tokens": 2,
        },
        "tasks": [{"name": "mc", "type": "multiple_choice", "path": "data/mc.jsonl"}],
    }
    if halving is not None:
        evaluation.update(fidelity="halving", halving=halving)
    spec = {
        "sft": str(pair[0]),
        "aligned": str(pair[1]),
        "out": "sweep-out",
        "candidates": {"grid": list(grid)},
        "evaluation": evaluation,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and link under ``roots`` (hidden ones too): its content's hash, or where a link points."""
    found = {}
    for root in roots:
        for here, _, names in os.walk(root):
            for name in names:
                path = Path(here) / name
                if path.is_symlink() or not path.is_file():
                    found[str(path)] = f"-> {os.readlink(path)}" if path.is_symlink() else "not a plain file"
                else:
                    found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def complete_lines(path: Path) -> list[dict]:
    return [{"share": 1.0, **json.loads(line)} for line in path.read_text().splitlines() if line.endswith("}")]


HOLDER = """
import sys
from pathlib import Path
from taxcut.io.publish import hold_lock
with hold_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes it
"""


class LockHolder:
    """Another process holding a lock file until the block ends; ``pid`` is its process id."""

    def __init__(self, lock: Path):
        self.lock = lock

    def __enter__(self) -> LockHolder:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(self.lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout.readline() == "held\n"
        self.pid = self.process.pid
        return self

    def __exit__(self, *exc) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0


# ---------------------------------------------------------------------------------------------------- one writer


def test_a_second_sweep_is_refused_at_once_naming_the_folder_and_the_running_sweep(llama_pair, tmp_path, monkeypatch):
    out = tmp_path / "sweep-out"
    run_sweep(SweepSpec.from_yaml(write_spec(tmp_path, llama_pair, grid=[0.0])), progress=False)
    spec = SweepSpec.from_yaml(write_spec(tmp_path, llama_pair, grid=[0.0, 0.5, 1.0]))  # more to measure

    def no_loading(*args, **kwargs):
        raise AssertionError("the evaluation's data or models were loaded")

    monkeypatch.setattr(runner.EvaluationSuite, "from_spec", no_loading)  # refused before any of it
    with LockHolder(out / SWEEP_LOCK) as holder:
        before = snapshot(out, tmp_path / "data", *llama_pair)
        started = time.monotonic()
        with pytest.raises(
            TaxcutError,
            match=rf"^{re.escape(str(out))}: another sweep \(pid {holder.pid} on .+\) "
            "is writing there; wait for it to finish, or give this sweep another "
            "'out'$",
        ):
            run_sweep(spec, progress=False)
        assert time.monotonic() - started < 5
        assert snapshot(out, tmp_path / "data", *llama_pair) == before  # nothing written, nothing read-modified
    assert not (out / SWEEP_LOCK).exists()  # its holder removed it on the way out


def test_two_sweeps_that_both_pass_the_first_check_still_cannot_both_write(llama_pair, tmp_path, monkeypatch):
    """The race the early check cannot see: both start together. The lock taken after claiming the folder decides,
    before anything is evaluated."""
    path = write_spec(tmp_path, llama_pair, grid=[0.0, 1.0])
    out = tmp_path / "sweep-out"
    out.mkdir()
    monkeypatch.setattr(runner, "probe_lock", lambda path: None)  # as if the other sweep had not locked yet
    with hold_lock(Path(os.path.realpath(out)) / SWEEP_LOCK):  # the other sweep (flock: per open file, so here too)
        with pytest.raises(
            TaxcutError,
            match=rf"^{re.escape(str(out))}: another sweep \(pid {os.getpid()} on "
            r".+\) is writing",
        ):
            run_sweep(SweepSpec.from_yaml(path), progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".taxcut"]  # the claim's marker, no result, no report


def test_a_sweep_running_in_another_process_refuses_a_second_and_keeps_only_its_own_lines(llama_pair, tmp_path):
    """No run's lines are left behind by a sweep that then says nothing of it was kept: the second never starts."""
    path = write_spec(tmp_path, llama_pair, grid=[0.0, 0.5, 1.0], prompts=24, function="slow_first_word_number")
    results = tmp_path / "sweep-out" / RESULTS_FILE
    first = subprocess.Popen(
        [sys.executable, "-m", "taxcut.cli", "sweep", str(path), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (results.exists() and results.read_text().strip()) and first.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert first.poll() is None, "the first sweep finished before the second started"
        written = results.read_bytes()
        with pytest.raises(TaxcutError, match=rf"another sweep \(pid {first.pid} on .+\) is writing there"):
            run_sweep(SweepSpec.from_yaml(path), progress=False)
        assert results.read_bytes().startswith(written)
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert "nothing of this run was kept" not in err
    ids = [r["candidate_id"] for r in complete_lines(results)]
    assert len(ids) == 3 == len(set(ids))  # each candidate once, all the first sweep's
    assert not (tmp_path / "sweep-out" / SWEEP_LOCK).exists()


@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_the_lock_file_is_never_followed_nor_waited_on(llama_pair, tmp_path, planted):
    path = write_spec(tmp_path, llama_pair, grid=[0.0])
    out = tmp_path / "sweep-out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's\n")
    if planted == "link":
        (out / SWEEP_LOCK).symlink_to(victim)
    else:
        os.mkfifo(out / SWEEP_LOCK)  # opening it for reading would wait for a writer forever
    before = snapshot(out, tmp_path / "data")
    with pytest.raises(
        TaxcutError,
        match=rf"^{re.escape(str(out / SWEEP_LOCK))}: is not taxcut's lock file \(a "
        r"link or not a plain file\); remove it and run again$",
    ):
        run_sweep(SweepSpec.from_yaml(path), progress=False)
    assert victim.read_text() == "the user's\n" and snapshot(out, tmp_path / "data") == before


# ---------------------------------------------------------------------------------------------------- linked reports


@pytest.mark.parametrize("name", REPORTS)
@pytest.mark.parametrize("dangling", [False, True])
def test_a_report_that_is_a_symbolic_link_is_refused_before_any_evaluation(llama_pair, tmp_path, name, dangling):
    path = write_spec(tmp_path, llama_pair, grid=[0.0])
    out = tmp_path / "sweep-out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / name
    if not dangling:
        target.write_bytes(b"not taxcut's\n")
    (out / name).symlink_to(target)
    before = snapshot(out, elsewhere, tmp_path / "data")
    kind = r" \(a dangling one\)" if dangling else ""
    with pytest.raises(
        TaxcutError,
        match=rf"^{re.escape(str(out / name))}: is a symbolic link{kind}, and taxcut "
        r"writes a sweep's reports only as files of its own, never through a "
        r"link; remove it$",
    ):
        run_sweep(SweepSpec.from_yaml(path), progress=False)
    assert snapshot(out, elsewhere, tmp_path / "data") == before  # not even the folder's marker
    assert not (out / RESULTS_FILE).exists() and os.path.exists(target) != dangling


def test_a_report_linked_while_the_sweep_ran_is_refused_when_written(tmp_path):
    """The check at write time: a link made after the sweep began is not followed either."""
    out = tmp_path / "sweep-out"
    out.mkdir()
    target = tmp_path / "victim.md"
    target.write_text("the user's notes\n")
    (out / "candidates.md").symlink_to(target)
    with pytest.raises(TaxcutError, match=r"candidates\.md: is a symbolic link, .* remove it$"):
        runner._write_report_file(out / "candidates.md", lambda partial: partial.write_text("| table |\n"))
    assert target.read_text() == "the user's notes\n" and (out / "candidates.md").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["candidates.md"]


# ---------------------------------------------------------------------------------------------------- bounded halving


@pytest.mark.parametrize("factor", [1.0000001, 1.2, 1.49, float("nan")])
def test_a_halving_factor_under_1_5_is_refused_naming_the_field(llama_pair, tmp_path, factor):
    path = write_spec(tmp_path, llama_pair, halving={"factor": factor})
    text = path.read_bytes()
    with pytest.raises(
        TaxcutError,
        match=rf"^{re.escape(str(path))}: field 'evaluation\.halving\.factor' is "
        rf"{factor}; it must be at least 1\.5 \(each stage",
    ):
        SweepSpec.from_yaml(path)
    assert path.read_bytes() == text
    with pytest.raises(TaxcutError, match=r"factor >= 1\.5"):
        HalvingSettings(factor=factor)  # the library's own settings too


def test_every_stage_adds_items_to_every_evaluator_so_none_is_empty():
    assert HalvingSettings(factor=1.5).shares() == [0.125, 0.1875, 0.28125, 0.421875, 0.632812, 0.949219, 1.0]
    # 3 items: the first 1/8 is one item, the next that adds one is 0.42 (2 items), then all 3
    assert HalvingSettings(factor=1.5, sizes=(3,)).shares() == [0.125, 0.421875, 1.0]
    assert HalvingSettings(factor=1.5, sizes=(48, 3)).shares() == [0.125, 0.421875, 1.0]  # every one grows
    assert HalvingSettings(factor=1.5, sizes=(48,)).shares() == [
        0.125,
        0.1875,
        0.28125,
        0.421875,
        0.632812,
        0.949219,
        1.0,
    ]
    assert HalvingSettings(sizes=(1,)).shares() == [1.0]  # one item: nothing to halve
    # a tiny start does not multiply the stages: at most one per item of the smallest evaluator
    tiny = HalvingSettings(start=1e-30, factor=1.5, sizes=(5, 1000)).shares()
    assert len(tiny) <= 5 and tiny[-1] == 1.0 and all(0 < s for s in tiny)


def test_halving_on_three_items_measures_no_empty_part():
    """Every part halving asks for holds items of every evaluator, and the result is that of all the items."""
    sizes = {"reward": 40, "mc": 3}
    parts = []

    def evaluate(candidates, part):
        for candidate in candidates:
            chosen = {name: part.items(name, size) or list(range(size)) for name, size in sizes.items()}
            assert all(chosen.values()), f"an empty part {part}"
            parts.append((part.start, part.stop))
            right = [float(i % 2 == 0) for i in chosen["mc"]]
            yield (
                candidate,
                Measurement(
                    Mean.of([candidate.alpha + i / 100 for i in chosen["reward"]]),
                    {"mc": {"acc": Mean.of(right, binary=True)}},
                    {"mc": "acc"},
                    {"mc": True},
                ),
            )

    class Book(dict):
        def full(self, cid):
            return self[(cid, 1.0)].result() if (cid, 1.0) in self else None

        def stage(self, cid, share):
            return self.get((cid, share))

        def shares(self, cid):
            return sorted(s for c, s in self if c == cid and s < 1.0)

        def add(self, candidate, measurement, share):
            self[(candidate.id, share)] = measurement

    book = Book()
    sft, aligned = ma_candidate(0.0), ma_candidate(1.0)
    outcome = successive_halving(
        [aligned], sft, evaluate, book, HalvingSettings(factor=1.5, sizes=tuple(sizes.values())), keep={aligned.id}
    )
    assert sorted(set(parts)) == [(0.0, 0.125), (0.125, 0.421875), (0.421875, 1.0)]
    full = book.full(aligned.id)
    assert full.tasks["mc"]["acc"] == pytest.approx(2 / 3)  # items 0 and 2 of 3, merged from the stages
    assert all(math.isfinite(p.reward) and math.isfinite(p.tax) for p in outcome.points.values())


def test_a_halving_sweep_on_a_three_item_task_finishes_without_a_nan(llama_pair, tmp_path):
    path = write_spec(tmp_path, llama_pair, grid=[0.0, 0.5, 1.0], prompts=16, items=3, halving={"factor": 1.5})
    report = run_sweep(SweepSpec.from_yaml(path), progress=False)
    records = complete_lines(tmp_path / "sweep-out" / RESULTS_FILE)
    assert {r["share"] for r in records} <= {0.125, 0.421875, 1.0}
    assert [r["share"] for r in records if r["label"] == "MA a=0"] == [0.125, 0.421875, 1.0]
    assert all(math.isfinite(r["primary"]["mc"]) for r in records)
    assert all(math.isfinite(row.tax) for row in report.rows) and len(report.rows) >= 2


def test_data_too_small_to_halve_is_said_and_measured_in_full(llama_pair, tmp_path, capsys):
    path = write_spec(tmp_path, llama_pair, grid=[0.0, 1.0], prompts=8, items=1, halving={"factor": 2})
    report = run_sweep(SweepSpec.from_yaml(path), progress=False)
    assert (
        "note: evaluation.halving: task 'mc' has 1 item(s), too few to measure on part of them from 'start'; "
        "every candidate is measured on all the data"
    ) in capsys.readouterr().err
    records = complete_lines(tmp_path / "sweep-out" / RESULTS_FILE)
    assert [r["share"] for r in records] == [1.0, 1.0] and len(report.rows) == 2
