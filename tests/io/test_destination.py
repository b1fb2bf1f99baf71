"""The destination policy: empty paths, inputs, what --overwrite may replace, staging, exclusive publishing,
sweeping."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from destination_fixtures import dead_pid

from taxcut.errors import TaxcutError
from taxcut.io import publish
from taxcut.io.destination import (
    MARKER,
    check_destination,
    claim_folder,
    destination_path,
    staged_file,
    staged_folder,
)
from taxcut.io.publish import STALE_AFTER_S, sweep_stale_staging

MEANWHILE = "was written by another run meanwhile; nothing of this run was kept"


def write_folder(out: Path, files: dict[str, str], *, overwrite: bool = False, inputs=(), kind: str = "merge"):
    with staged_folder(out, overwrite=overwrite, inputs=list(inputs), kind=kind) as staging:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)


def write_file(out: Path, text: str, *, overwrite: bool = False, inputs=(), kind: str = "fit set"):
    with staged_file(out, overwrite=overwrite, inputs=list(inputs), kind=kind) as partial:
        partial.write_text(text)


def refusal(action, *args, **kwargs) -> str:
    """The one-line message ``action(*args, **kwargs)`` is refused with."""
    with pytest.raises(TaxcutError) as caught:
        action(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def housekeeping(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".taxcut-" in p.name)


# ------------------------------------------------------------------------------------------- 1. empty paths


@pytest.mark.parametrize("raw", ["", " ", "\t", "  \n "])
def test_empty_or_whitespace_destination_is_refused(raw):
    message = refusal(lambda: destination_path(raw, "--out"))
    assert message.startswith("--out is empty") and "unset shell variable" in message


def test_missing_destination_is_refused():
    assert refusal(lambda: destination_path(None, "--out DIR (or 'out:' in the spec)")) == (
        "no destination: give --out DIR (or 'out:' in the spec)"
    )


def test_destination_path_accepts_real_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert destination_path("models/out") == Path("models/out")
    assert destination_path(".") == Path(".")  # typed on purpose: the other rules still protect the folder
    assert destination_path("~/out") == tmp_path / "out"
    assert "NUL" in refusal(lambda: destination_path("a\0b"))


@pytest.mark.parametrize("raw", ["", "  "])
def test_staging_refuses_an_empty_string(tmp_path, monkeypatch, raw):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thesis.tex").write_text("mine")
    refusal(lambda: write_folder(raw, {"a": "b"}, overwrite=True))
    refusal(lambda: write_file(raw, "x", overwrite=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_root_is_refused():
    assert "the root folder cannot be a destination" in refusal(
        lambda: check_destination("/", overwrite=True, inputs=[])
    )


# ------------------------------------------------------------------------------------------- 2. never into an input


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_destination_overlapping_an_input_folder_is_refused(model, where):
    out = {"same": model, "inside": model / "merged", "contains": model.parent}[where]
    before = snapshot(model)
    message = refusal(lambda: write_folder(out, {"x": "y"}, overwrite=True, inputs=[("sft", model)]))
    relation = {"same": "is", "inside": "lies inside", "contains": "contains"}[where]
    assert message == (
        f"{out}: the destination {relation} the sft folder {model}; write the merge somewhere outside the inputs"
    )
    assert snapshot(model) == before
    assert not housekeeping(out.parent)


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_destination_overlapping_a_data_file_is_refused(tmp_path, where):
    data = tmp_path / "data" / "prompts.jsonl"
    data.parent.mkdir()
    data.write_text('{"prompt": "hi"}\n')
    out = {"same": data, "inside": data / "fit.jsonl", "contains": data.parent}[where]
    for write in (write_file, write_folder):
        content = "x" if write is write_file else {"x": "y"}
        message = refusal(write, out, content, overwrite=True, inputs=[("prompts", data)])
        assert "the prompts file" in message and "somewhere outside the inputs" in message
    assert data.read_text() == '{"prompt": "hi"}\n'


def test_the_spec_file_itself_is_an_input(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text("# my comments\nsft: a\n")
    for out in (spec, tmp_path):
        message = refusal(write_file, out, "x", overwrite=True, inputs=[("spec", spec)], kind="report")
        assert "the spec file" in message and "write the report somewhere outside the inputs" in message
    assert "the spec file" in refusal(
        lambda: claim_folder(tmp_path, inputs=[("spec", spec)], kind="sweep results", entries=["results.jsonl"])
    )
    assert spec.read_text() == "# my comments\nsft: a\n"


def test_overlap_is_judged_through_symlinks(tmp_path, model):
    link = tmp_path / "link-to-sft"
    link.symlink_to(model)
    before = snapshot(model)
    # the destination is a link to the input, goes through one, or the input is given through one
    assert " is the sft folder" in refusal(
        lambda: write_folder(link, {"x": "y"}, overwrite=True, inputs=[("sft", model)])
    )
    assert "lies inside the sft folder" in refusal(
        lambda: write_file(link / "ratios.yaml", "x", overwrite=True, inputs=[("sft", model)])
    )
    assert " is the sft folder" in refusal(
        lambda: write_folder(model, {"x": "y"}, overwrite=True, inputs=[("sft", link)])
    )
    data = tmp_path / "prompts.jsonl"
    data.write_text("p\n")
    data_link = tmp_path / "fit.jsonl"
    data_link.symlink_to(data)
    assert " is the prompts file" in refusal(
        lambda: write_file(data_link, "x", overwrite=True, inputs=[("prompts", data)])
    )
    assert snapshot(model) == before and data.read_text() == "p\n"


def test_inputs_that_are_none_are_skipped(tmp_path, model):
    write_folder(tmp_path / "out", {"x": "y"}, inputs=[("base", None), ("sft", model)])
    assert (tmp_path / "out" / "x").read_text() == "y"


def test_a_sibling_with_a_common_prefix_is_not_an_input(tmp_path, model):
    write_folder(model.parent / "sft-merged", {"x": "y"}, inputs=[("sft", model)])  # "sft-merged" is not in "sft"
    assert (model.parent / "sft-merged" / "x").is_file()


# ----------------------------------------------------------------------------- 3. overwrite only what taxcut wrote


def test_a_new_folder_gets_the_marker_listing_its_files(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"config.json": "{}", "sub/tokenizer.json": "{}"}, kind="merge")
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "taxcut" and marker["kind"] == "merge"
    assert marker["entries"] == ["config.json", "sub/tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no staging left beside it


def test_an_existing_taxcut_folder_needs_overwrite(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"a": "old"})
    assert refusal(lambda: write_folder(out, {"a": "new"})) == (
        f"{out}: exists and is not empty; pass --overwrite to replace it"
    )
    assert (out / "a").read_text() == "old"
    write_folder(out, {"b": "new"}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_user_files_is_never_replaced(tmp_path, overwrite):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_bytes(b"\\documentclass{article}")
    for i in range(11):
        (out / "figures").mkdir(exist_ok=True)
        (out / "figures" / f"fig{i}.png").write_bytes(bytes([i]))
    before = snapshot(out)
    assert refusal(lambda: write_folder(out, {"a": "b"}, overwrite=overwrite)) == (
        f"{out}: contains 12 files taxcut did not write, e.g. thesis.tex; choose another destination"
    )
    assert snapshot(out) == before
    assert not housekeeping(tmp_path)


def test_a_user_file_added_to_a_taxcut_folder_protects_it(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"model.safetensors": "w"})
    (out / "notes.md").write_text("my notes")
    assert refusal(lambda: write_folder(out, {"a": "b"}, overwrite=True)) == (
        f"{out}: contains 1 file taxcut did not write, e.g. notes.md; choose another destination"
    )
    assert (out / "notes.md").read_text() == "my notes" and (out / "model.safetensors").read_text() == "w"


def test_a_model_folder_merged_before_the_marker_is_replaced(tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "taxcut_provenance.json").write_text(json.dumps({"taxcut_version": "0.1.0", "spec": {}}))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "generation_config.json"):
        (out / name).write_text(name)
    write_folder(out, {"model.safetensors": "new"}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "model.safetensors"]


def test_a_provenance_file_does_not_cover_other_files(tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "taxcut_provenance.json").write_text(json.dumps({"taxcut_version": "0.1.0"}))
    (out / "model.safetensors").write_text("w")
    (out / "thesis.tex").write_text("mine")
    assert "contains 1 file taxcut did not write, e.g. thesis.tex" in refusal(
        lambda: write_folder(out, {"a": "b"}, overwrite=True)
    )
    assert (out / "thesis.tex").read_text() == "mine"


def test_a_forged_or_broken_provenance_file_is_not_taxcuts(tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "taxcut_provenance.json").write_text("not json")
    (out / "model.safetensors").write_text("w")
    assert "contains 2 files taxcut did not write" in refusal(lambda: write_folder(out, {"a": "b"}, overwrite=True))


def test_an_empty_folder_is_free(tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    write_folder(out, {"a": "b"})
    assert (out / "a").read_text() == "b"


def test_a_file_where_a_folder_goes_is_refused(tmp_path):
    out = tmp_path / "merged"
    out.write_text("mine")
    assert refusal(lambda: write_folder(out, {"a": "b"}, overwrite=True)) == (
        f"{out}: exists and is a file, not a folder; choose another destination"
    )
    assert out.read_text() == "mine"


def test_a_new_file_gets_a_sidecar_and_keeps_its_format(tmp_path):
    out = tmp_path / "fit.jsonl"
    write_file(out, '{"prompt": "p", "response": "r"}\n')
    assert out.read_text() == '{"prompt": "p", "response": "r"}\n'  # nothing added to the file itself
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fit.jsonl.taxcut", "fit.jsonl"]
    assert json.loads((tmp_path / ".fit.jsonl.taxcut").read_text())["written_by"] == "taxcut"


def test_a_taxcut_file_needs_overwrite_and_is_then_replaced(tmp_path):
    out = tmp_path / "ratios.yaml"
    write_file(out, "alphas: [0.1]\n", kind="ratios file")
    assert refusal(lambda: write_file(out, "alphas: [0.2]\n", kind="ratios file")) == (
        f"{out}: exists; pass --overwrite to replace it"
    )
    write_file(out, "alphas: [0.2]\n", overwrite=True, kind="ratios file")
    write_file(out, "alphas: [0.3]\n", overwrite=True, kind="ratios file")  # and again: the sidecar follows
    assert out.read_text() == "alphas: [0.3]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ratios.yaml.taxcut", "ratios.yaml"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_user_file_is_never_replaced(tmp_path, overwrite):
    out = tmp_path / "config.json"
    out.write_bytes(b'{"mine": 1}')
    assert refusal(lambda: write_file(out, "x", overwrite=overwrite)) == (
        f"{out}: is a file taxcut did not write (or one changed since); choose another destination"
    )
    assert out.read_bytes() == b'{"mine": 1}'
    assert not housekeeping(tmp_path)


def test_a_taxcut_file_edited_since_is_the_users(tmp_path):
    out = tmp_path / "ratios.yaml"
    write_file(out, "alphas: [0.1]\n")
    out.write_text("alphas: [0.1]  # tuned by hand\n")
    assert "is a file taxcut did not write (or one changed since)" in refusal(
        lambda: write_file(out, "x", overwrite=True)
    )
    assert out.read_text() == "alphas: [0.1]  # tuned by hand\n"


def test_a_folder_where_a_file_goes_is_refused(tmp_path):
    out = tmp_path / "fit.jsonl"
    out.mkdir()
    assert refusal(lambda: write_file(out, "x", overwrite=True)) == (
        f"{out}: exists and is a folder, not a file; choose another destination"
    )


# ------------------------------------------------------------------------------------------- claimed results folders

RESULTS = ["results.jsonl", "candidates.csv", "front.png", "hma/"]


def test_a_results_folder_is_claimed_reused_and_its_reports_replaced(tmp_path):
    out = tmp_path / "sweep-out"
    assert claim_folder(out, inputs=[], kind="sweep results", entries=RESULTS) == out
    (out / "results.jsonl").write_text('{"candidate_id": "a"}\n')
    (out / "hma").mkdir()
    (out / "hma" / "fit-0.5.yaml").write_text("x")
    claim_folder(out, inputs=[], kind="sweep results", entries=RESULTS)  # a resumed sweep: nothing removed
    assert (out / "results.jsonl").read_text() == '{"candidate_id": "a"}\n'
    write_file(out / "candidates.csv", "id\n", kind="table")
    write_file(out / "candidates.csv", "id\na\n", overwrite=True, kind="table")  # listed in the folder's marker
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "candidates.csv", "hma", "results.jsonl"]
    write_folder(out, {"model.safetensors": "w"}, overwrite=True)  # a results folder is taxcut's to replace
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "model.safetensors"]


def test_claiming_refuses_user_folders_and_other_kinds(tmp_path):
    user = tmp_path / "home"
    user.mkdir()
    (user / "thesis.tex").write_text("mine")
    (user / "results.jsonl").write_text("mine too")
    assert refusal(lambda: claim_folder(user, inputs=[], kind="sweep results", entries=RESULTS)) == (
        f"{user}: contains 1 file taxcut did not write, e.g. thesis.tex; choose another destination"
    )
    assert not (user / MARKER).exists()
    model = tmp_path / "merged"
    write_folder(model, {"model.safetensors": "w"})
    assert refusal(lambda: claim_folder(model, inputs=[], kind="sweep results", entries=RESULTS)) == (
        f"{model}: is a merge folder taxcut wrote, not a sweep results folder; choose another destination"
    )
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "exists and is a file, not a folder" in refusal(
        lambda: claim_folder(afile, inputs=[], kind="sweep results", entries=RESULTS)
    )


def test_a_results_folder_from_before_the_marker_is_adopted(tmp_path):
    out = tmp_path / "sweep-out"
    out.mkdir()
    (out / "results.jsonl").write_text("{}\n")
    (out / "front.png").write_bytes(b"png")
    claim_folder(out, inputs=[], kind="sweep results", entries=RESULTS)
    assert json.loads((out / MARKER).read_text())["kind"] == "sweep results"
    assert (out / "results.jsonl").read_text() == "{}\n"


# ------------------------------------------------------------------------------------------- 4. files staged beside


def test_a_staged_file_lies_beside_the_destination_with_its_suffix(tmp_path):
    out = tmp_path / "front.png"
    with staged_file(out, overwrite=False, inputs=[], kind="plot") as partial:
        assert partial.parent == tmp_path and partial.name.endswith(".png") and partial.name.startswith(".")
        assert not out.exists()
        partial.write_bytes(b"png")
    assert out.read_bytes() == b"png" and not partial.exists()


@pytest.mark.parametrize("writer", [write_file, write_folder])
def test_a_failure_leaves_no_destination_and_no_staging(tmp_path, writer):
    out = tmp_path / "out"
    staged = (
        staged_file(out, overwrite=False, inputs=[], kind="x")
        if writer is write_file
        else staged_folder(out, overwrite=False, inputs=[])
    )
    with pytest.raises(RuntimeError), staged:
        raise RuntimeError("the merge failed")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_overwriting_keeps_the_old_output(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"a": "old"})
    with pytest.raises(KeyboardInterrupt), staged_folder(out, overwrite=True, inputs=[]) as staging:
        (staging / "a").write_text("new")
        raise KeyboardInterrupt
    assert (out / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# ------------------------------------------------------------------------------------------- 5. exclusive publish


def race(write) -> int:
    """Run ``write(barrier, who)`` in two threads that meet inside the staging block; return the winner.

    Exactly one must succeed and the other fail with the "meanwhile" line."""
    barrier = threading.Barrier(2)
    results: list[BaseException | None] = [None, None]

    def run(who: int) -> None:
        try:
            write(barrier, who)
        except BaseException as exc:  # collected for the assertion
            results[who] = exc

    threads = [threading.Thread(target=run, args=(who,)) for who in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    losers = [r for r in results if r is not None]
    assert len(losers) == 1, results
    assert isinstance(losers[0], TaxcutError) and MEANWHILE in str(losers[0]), results
    return results.index(None)


@pytest.mark.parametrize("renameat2", [True, False])
@pytest.mark.parametrize("overwrite", [False, True])
def test_two_folder_writers_exactly_one_wins(tmp_path, monkeypatch, renameat2, overwrite):
    monkeypatch.setattr(publish, "_USE_RENAMEAT2", renameat2)
    out = tmp_path / "merged"
    if overwrite:
        write_folder(out, {"who": "earlier"})

    def write(barrier, who):
        with staged_folder(out, overwrite=overwrite, inputs=[]) as staging:
            (staging / "who").write_text(str(who))
            barrier.wait()

    for _ in range(3):
        if not overwrite:
            publish._remove(out)
        winner = race(write)
        assert (out / "who").read_text() == str(winner)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


@pytest.mark.parametrize("renameat2", [True, False])
@pytest.mark.parametrize("overwrite", [False, True])
def test_two_file_writers_exactly_one_wins(tmp_path, monkeypatch, renameat2, overwrite):
    monkeypatch.setattr(publish, "_USE_RENAMEAT2", renameat2)
    out = tmp_path / "fit.jsonl"
    if overwrite:
        write_file(out, "earlier\n")

    def write(barrier, who):
        with staged_file(out, overwrite=overwrite, inputs=[], kind="fit set") as partial:
            partial.write_text(f"{who}\n")
            barrier.wait()

    for _ in range(3):
        if not overwrite:
            publish._remove(out)
        winner = race(write)
        assert out.read_text() == f"{winner}\n"
    write_file(out, "after\n", overwrite=True)  # the winner's sidecar is right: taxcut may replace it again
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fit.jsonl.taxcut", "fit.jsonl"]


@pytest.mark.parametrize("renameat2", [True, False])
def test_an_empty_folder_appearing_meanwhile_is_not_written_over(tmp_path, monkeypatch, renameat2):
    monkeypatch.setattr(publish, "_USE_RENAMEAT2", renameat2)
    out = tmp_path / "merged"  # a plain rename onto an empty folder would succeed silently
    with pytest.raises(TaxcutError, match=MEANWHILE), staged_folder(out, overwrite=False, inputs=[]) as staging:
        (staging / "a").write_text("b")
        out.mkdir()
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_a_user_file_added_before_the_publish_is_kept(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"a": "old"})
    with (
        pytest.raises(TaxcutError, match="contains 1 file taxcut did not write, e.g. notes.md"),
        staged_folder(out, overwrite=True, inputs=[]) as staging,
    ):
        (staging / "a").write_text("new")
        (out / "notes.md").write_text("mine")  # while the run was writing
    assert (out / "notes.md").read_text() == "mine"


RACER = """
import os, sys, time
from pathlib import Path
from taxcut.errors import TaxcutError
from taxcut.io.destination import staged_folder
out, ready, go, overwrite = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
try:
    with staged_folder(out, overwrite=overwrite, inputs=[]) as staging:
        (staging / "who").write_text(str(os.getpid()))
        ready.touch()
        while not go.exists():
            time.sleep(0.01)
except TaxcutError as exc:
    print(f"taxcut: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_processes_exactly_one_wins(tmp_path, overwrite):
    out, go = tmp_path / "merged", tmp_path / "go"
    if overwrite:
        write_folder(out, {"who": "earlier"})
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(out), str(r), str(go), str(int(overwrite))],
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 120  # a guard against a hang, not a timing assertion
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            break
        time.sleep(0.01)
    go.touch()  # both are past their checks, staged, and about to publish
    errors = [p.communicate(timeout=120)[1] for p in processes]
    codes = [p.returncode for p in processes]
    assert sorted(codes) == [0, 2], errors
    winner, loser = codes.index(0), codes.index(2)
    assert (out / "who").read_text() == str(processes[winner].pid)
    assert errors[loser] == f"taxcut: error: {out}: {MEANWHILE}\n"
    assert not housekeeping(tmp_path)


# ------------------------------------------------------------------------------------------- 6. stale staging swept


def staging_name(target: str, pid: int, host: str | None = publish._HOST, what: str = "partial") -> str:
    return f".{target}.taxcut-{what}-{pid}-" + (f"{host}-" if host else "") + "abc123xy"


def mark(staging: Path) -> None:
    """Add the mark taxcut writes with every staging (inside a folder, beside a file): the sweep needs both."""
    folder = staging.is_dir()
    publish._mark(staging / publish._STAGING_MARK if folder else publish._beside_mark(staging), staging.name)


def test_staging_of_a_dead_process_is_swept_by_any_run_there(tmp_path):
    pid = dead_pid()
    folder_left = tmp_path / staging_name("merged", pid)
    folder_left.mkdir()
    mark(folder_left)
    (folder_left / "model-00001.safetensors").write_bytes(b"half")
    file_left = tmp_path / staging_name("fit.jsonl", pid)
    file_left.write_text("half")
    mark(file_left)
    retired = tmp_path / staging_name("merged", pid, what="old")
    retired.mkdir()
    mark(retired)
    older_version = tmp_path / staging_name("other", pid, host=None)  # named before the host tag existed
    older_version.mkdir()
    mark(older_version)
    write_file(tmp_path / "ratios.yaml", "x")  # another name, same folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ratios.yaml.taxcut", "ratios.yaml"]


def test_staging_of_a_live_process_is_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = tmp_path / staging_name("merged", sleeper.pid)
        live.mkdir()  # made after the process started: it could be that process's
        mine = tmp_path / staging_name("other", os.getpid())
        mine.mkdir()
        mark(live)
        mark(mine)
        assert sweep_stale_staging(tmp_path) == []
        write_folder(tmp_path / "out", {"a": "b"})
        assert live.is_dir() and mine.is_dir()
        os.utime(live, (time.time() - 3600, time.time() - 3600))  # older than the process: its pid was reused
        assert sweep_stale_staging(tmp_path) == [live]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_staging_made_on_another_machine_is_swept_only_when_old(tmp_path):
    recent = tmp_path / staging_name("a", 1, host="0000beef")
    old = tmp_path / staging_name("b", 1, host="0000beef")
    recent.mkdir()
    old.mkdir()
    mark(recent)
    mark(old)
    past = time.time() - STALE_AFTER_S - 3600
    os.utime(old, (past, past))
    assert sweep_stale_staging(tmp_path) == [old]
    assert recent.is_dir()


def test_free_locks_and_orphan_sidecars_are_swept(tmp_path):
    write_file(tmp_path / "kept.jsonl", "x")
    write_file(tmp_path / "moved.jsonl", "y")
    (tmp_path / "moved.jsonl").unlink()
    (tmp_path / ".merged.taxcut-lock").write_text("")  # left by a run killed while it held the lock
    (tmp_path / ".notes.taxcut").write_text("a user's own file of that shape")
    sweep_stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kept.jsonl.taxcut", ".notes.taxcut", "kept.jsonl"]


# ---------------------------------------------------------------------------------- 7. killed runs, disk errors

KILLED = """
import os, signal, sys
from pathlib import Path
from taxcut.io.destination import staged_folder
with staged_folder(Path(sys.argv[1]), overwrite=False, inputs=[]) as staging:
    (staging / "model-00001.safetensors").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_leaves_no_destination_and_its_staging_is_swept(tmp_path):
    out = tmp_path / "merged"
    process = subprocess.run([sys.executable, "-c", KILLED, str(out)], check=False)
    assert process.returncode == -9
    assert not out.exists() and len(housekeeping(tmp_path)) == 1
    write_file(tmp_path / "ratios.yaml", "x")
    assert not housekeeping(tmp_path) and not out.exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "merged"

    def fill(staging):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "model-00002.safetensors"))

    with pytest.raises(TaxcutError) as caught, staged_folder(out, overwrite=False, inputs=[], kind="merge") as staging:
        fill(staging)
    message = str(caught.value)
    assert message.startswith(f"{out}: writing the merge failed (No space left on device at ")
    assert message.endswith("; nothing was written there") and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_place_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for write in (write_file, write_folder):
        content = "x" if write is write_file else {"a": "b"}
        message = refusal(write, blocker / "out", content)
        assert message.startswith(f"{blocker / 'out'}: cannot write there (")
        assert message.endswith("; choose another destination")
    assert blocker.read_text() == "x"


def test_check_destination_fails_fast_without_writing(tmp_path, model):
    out = tmp_path / "merged"
    check_destination(out, overwrite=False, inputs=[("sft", model)])
    assert "lies inside the sft folder" in refusal(
        lambda: check_destination(model / "x", overwrite=False, inputs=[("sft", model)], folder=False)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
