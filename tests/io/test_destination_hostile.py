"""Hostile destinations, second pass: another mount of an input, weights linked out of the model
folder, a link planted at the lock, staging look-alikes, control characters in paths, edited taxcut folders."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from destination_fixtures import dead_pid
from models import write_synthetic_pair
from safetensors.torch import save_file

from taxcut.cli import main
from taxcut.errors import TaxcutError
from taxcut.io import destination, publish
from taxcut.io.checkpoint import Checkpoint
from taxcut.io.destination import MARKER, check_destination, claim_folder, staged_file, staged_folder
from taxcut.io.publish import quoted, remove_leftovers, sweep_stale_staging


def write_folder(out: Path, files: dict[str, str | bytes], *, overwrite: bool = False, inputs=()) -> None:
    with staged_folder(out, overwrite=overwrite, inputs=list(inputs), kind="merge") as staging:
        for name, content in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (staging / name).write_bytes(content)
            else:
                (staging / name).write_text(content)


def write_file(out: Path, text: str, *, overwrite: bool = False, inputs=()) -> None:
    with staged_file(out, overwrite=overwrite, inputs=list(inputs), kind="fit set") as partial:
        partial.write_text(text)


def refusal(action, *args, **kwargs) -> str:
    with pytest.raises(TaxcutError) as caught:
        action(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    return message


def digest_tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones included), links by target, files by content."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[relative] = "-> " + os.readlink(path)
        elif path.is_file():
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[relative] = "folder"
    return found


# ------------------------------------------------------------------------------------------- 1. another mount


@pytest.fixture
def bind_mount(tmp_path):
    """``mount(source, at)``: a bind mount, unmounted at the end; skips where this sandbox may not mount."""
    mounted: list[Path] = []

    def mount(source: Path, at: Path) -> Path:
        at.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "--bind", str(source), str(at)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(
                f"cannot bind-mount here ({done.stderr.strip() or done.returncode}); the (device, inode) "
                "comparison is covered by test_one_folder_reached_two_ways_is_one_folder"
            )
        mounted.append(at)
        return at

    yield mount
    for at in reversed(mounted):
        subprocess.run(["umount", str(at)], check=False)


def test_out_inside_a_bind_mount_of_an_input_is_refused(tmp_path, model, bind_mount):
    alias = bind_mount(model, tmp_path / "mnt" / "alias")
    before = digest_tree(model)
    for out in (alias / "merged", alias / "deeper" / "merged", alias):
        message = refusal(check_destination, out, overwrite=True, inputs=[("sft", model)])
        assert message.startswith(f"{out}: the destination ")
        assert "(through another path or mount)" in message and f"the sft folder {model}" in message
        assert message.endswith("write the merge somewhere outside the inputs")
        refusal(write_folder, out, {"model.safetensors": "x"}, overwrite=True, inputs=[("sft", model)])
    assert digest_tree(model) == before and not (model / "merged").exists()


def test_out_containing_an_input_through_a_bind_mount_is_refused(tmp_path, model, bind_mount):
    alias = bind_mount(model.parent, tmp_path / "mnt" / "models")  # the folder above the input, mounted again
    write_folder(tmp_path / "elsewhere", {"a": "b"})
    message = refusal(check_destination, alias, overwrite=True, inputs=[("sft", model)])
    assert "the destination contains (through another path or mount) the sft folder" in message
    assert (model / "model.safetensors").read_bytes() == b"weights"


def test_merge_into_a_bind_mount_of_its_input_exits_nonzero(tmp_path, capsys, bind_mount):
    sft, aligned = write_synthetic_pair(tmp_path, layers=1, elements=8)
    before = digest_tree(sft)
    alias = bind_mount(sft, tmp_path / "mnt")
    code = main(
        [
            "merge",
            "--sft",
            str(sft),
            "--aligned",
            str(aligned),
            "--alpha",
            "0.5",
            "--out",
            str(alias / "merged"),
            "--no-progress",
        ]
    )
    error = capsys.readouterr().err
    assert code != 0 and "Traceback" not in error
    assert error.count("\n") == 1 and "lies (through another path or mount) inside the sft model folder" in error
    assert digest_tree(sft) == before


def test_one_folder_reached_two_ways_is_one_folder(tmp_path, model):
    """The (device, inode) comparison alone, on paths not resolved first (a link stands in for a bind mount)."""
    alias = tmp_path / "alias"
    alias.symlink_to(model)
    above = tmp_path / "models-alias"
    above.symlink_to(model.parent)
    relation = destination._relation
    assert relation(alias, model) == "is (through another path or mount)"
    assert relation(alias / "out", model) == "lies (through another path or mount) inside"
    assert relation(alias / "not" / "yet" / "made", model) == "lies (through another path or mount) inside"
    assert relation(above, model) == "contains (through another path or mount)"
    assert relation(tmp_path / "apart", model) is None
    assert relation(model / "out", model) == "lies inside"  # plain paths are still compared first


# ------------------------------------------------------------------------------------------- 2. weights linked out


def single_file_model(folder: Path, weights: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    tensors = {"model.norm.weight": torch.ones(4)}
    if weights.endswith(".bin"):
        torch.save(tensors, folder / weights)
    else:
        save_file(tensors, folder / weights, metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("how", ["file link", "folder link"])
def test_a_single_weight_file_linked_outside_the_folder_is_refused(tmp_path, weights, how):
    elsewhere = single_file_model(tmp_path / "elsewhere", weights)  # a valid model: following the link would "work"
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    if how == "file link":
        (folder / weights).symlink_to(elsewhere / weights)
    else:
        (folder / "sub").symlink_to(elsewhere)
        (folder / weights).symlink_to(Path("sub") / weights)
    before = digest_tree(elsewhere)
    message = refusal(Checkpoint, folder, "sft")
    assert message == (
        f"{folder / weights}: links to {elsewhere / weights}, outside the model folder; a model's "
        "weights must lie inside its own folder — copy the file there"
    )
    assert digest_tree(elsewhere) == before


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_single_weight_file_linked_inside_the_folder_or_its_cache_blobs_opens(tmp_path, weights):
    folder = single_file_model(tmp_path / "m", weights)
    (folder / "store").mkdir()
    (folder / weights).rename(folder / "store" / weights)
    (folder / weights).symlink_to(Path("store") / weights)
    with Checkpoint(folder) as checkpoint:
        assert checkpoint.read(checkpoint.tensors["model.norm.weight"]).tolist() == [1.0] * 4
    repo = tmp_path / "models--org--name"  # the Hugging Face cache layout: a snapshot links into blobs
    single_file_model(repo / "blobs", weights)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in ("config.json", weights):
        (snapshot / file).symlink_to(Path("../../blobs") / file)
    with Checkpoint(snapshot) as checkpoint:
        assert list(checkpoint.tensors) == ["model.norm.weight"]


# ------------------------------------------------------------------------------------------- 3. the lock file


def test_a_link_planted_at_the_lock_is_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's notes")
    missing = tmp_path / "would-be-created"
    for planted_to, out in ((victim, tmp_path / "merged"), (missing, tmp_path / "fit.jsonl")):
        lock = out.parent / f".{out.name}.taxcut-lock"
        lock.symlink_to(planted_to)
        writer = write_folder if out.name == "merged" else write_file
        message = refusal(writer, out, {"a": "b"} if out.name == "merged" else "x")
        assert message == f"{lock}: is not taxcut's lock file (a link or not a plain file); remove it and run again"
        assert not out.exists() and lock.is_symlink()
    assert victim.read_text() == "the user's notes" and not missing.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".fit.jsonl.taxcut-lock",
        ".merged.taxcut-lock",
        "victim.txt",
    ]  # no staging left either


def test_a_fifo_at_the_lock_is_refused_not_waited_on(tmp_path):
    out = tmp_path / "results"
    os.mkfifo(tmp_path / ".results.taxcut-lock")
    assert "is not taxcut's lock file" in refusal(write_folder, out, {"a": "b"})
    assert not out.exists()


def test_the_sweep_removes_only_empty_plain_lock_files(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / ".linked.taxcut-lock").symlink_to(victim)
    (tmp_path / ".notes.taxcut-lock").write_text("a user's file of that shape")
    (tmp_path / ".merged.taxcut-lock").write_text("")  # a killed run's lock
    sweep_stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".linked.taxcut-lock", ".notes.taxcut-lock", "victim.txt"]
    assert victim.read_text() == "keep"


# ------------------------------------------------------------------------------------------- 4. staging look-alikes


def look_alike(folder: Path, target: str, pid: int, *, what: str = "partial") -> str:
    return f".{target}.taxcut-{what}-{pid}-{publish._HOST}-users0wn"


def test_a_users_folder_named_like_staging_is_never_swept(tmp_path):
    pid = dead_pid()
    users = [tmp_path / look_alike(tmp_path, "merged", pid), tmp_path / look_alike(tmp_path, "x", pid, what="old")]
    for folder in users:
        folder.mkdir()
        (folder / "thesis.tex").write_text("years of work")
    user_file = tmp_path / look_alike(tmp_path, "fit.jsonl", pid)
    user_file.write_text("a user's file")
    before = digest_tree(tmp_path)
    assert sweep_stale_staging(tmp_path) == []
    remove_leftovers(tmp_path / "merged")
    write_folder(tmp_path / "merged", {"a": "b"})  # staging there sweeps the folder first
    write_file(tmp_path / "fit.jsonl", "x")
    after = digest_tree(tmp_path)
    assert {name: after[name] for name in before} == before


def test_a_users_staging_look_alike_inside_a_taxcut_folder_blocks_overwrite(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"a": "b"})
    user_file = out / look_alike(out, "notes", dead_pid())
    user_file.write_text("mine")
    assert "contains 1 file taxcut did not write" in refusal(write_folder, out, {"a": "c"}, overwrite=True)
    assert user_file.read_text() == "mine" and (out / "a").read_text() == "b"


KILLED = """
import os, signal, sys
from pathlib import Path
from taxcut.io.destination import staged_file, staged_folder
stage = staged_folder if sys.argv[2] == "folder" else staged_file
with stage(Path(sys.argv[1]), overwrite=False, inputs=[], kind="merge") as staging:
    (staging / "model.safetensors" if sys.argv[2] == "folder" else staging).write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("what", ["folder", "file"])
def test_staging_is_marked_and_a_killed_runs_is_swept_mark_and_all(tmp_path, what):
    out = tmp_path / ("merged" if what == "folder" else "fit.jsonl")
    process = subprocess.run([sys.executable, "-c", KILLED, str(out), what], check=False)
    assert process.returncode == -signal.SIGKILL
    left = sorted(p for p in tmp_path.iterdir() if ".taxcut-" in p.name)
    if what == "folder":
        assert len(left) == 1 and (left[0] / ".taxcut-staging").is_file()
    else:
        assert [p.name for p in left] == [left[0].name, left[0].name + ".taxcut-staging"]
    assert sweep_stale_staging(tmp_path) == [left[0]]
    assert not any(".taxcut-" in p.name for p in tmp_path.iterdir())


def test_nothing_published_keeps_a_staging_mark(tmp_path):
    write_folder(tmp_path / "merged", {"a": "b"})
    write_folder(tmp_path / "merged", {"a": "c"}, overwrite=True)
    write_file(tmp_path / "fit.jsonl", "x")
    write_file(tmp_path / "fit.jsonl", "y", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fit.jsonl.taxcut", "fit.jsonl", "merged"]
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == [MARKER, "a"]


def test_the_fallback_renames_mark_what_they_leave(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "_USE_RENAMEAT2", False)
    write_folder(tmp_path / "merged", {"a": "b"})
    write_folder(tmp_path / "merged", {"a": "c"}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == [MARKER, "a"]


# ------------------------------------------------------------------------------------------- 5. control characters


@pytest.mark.parametrize("name", ["bad\nname", "tab\there", "esc\x1b[31mred", "cr\rname"])
def test_a_destination_with_control_characters_is_quoted_on_one_line(tmp_path, model, name):
    out = tmp_path / name
    out.write_text("the user's file")
    message = refusal(write_file, out, "x", overwrite=True)
    assert message == f"{str(out)!r}: is a file taxcut did not write (or one changed since); choose another destination"
    assert out.read_text() == "the user's file"
    inside = model / name
    message = refusal(check_destination, inside, overwrite=False, inputs=[("sft", model)])
    assert message.startswith(f"{str(inside)!r}: the destination lies inside the sft folder {model}")


def test_an_input_and_a_foreign_file_with_a_newline_are_quoted(tmp_path):
    data = tmp_path / "da\nta"
    data.mkdir()
    assert f"the data folder {str(data)!r};" in refusal(
        check_destination, data / "out", overwrite=False, inputs=[("data", data)]
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "new\nline.txt").write_text("mine")
    assert f"e.g. {'new' + chr(10) + 'line.txt'!r};" in refusal(check_destination, out, overwrite=True, inputs=[])
    assert quoted("plain/path") == "plain/path" and quoted("a\nb") == "'a\\nb'"


# ------------------------------------------------------------------------------------------- 6. edited taxcut folders


def marker_of(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text())


def test_overwrite_of_a_taxcut_folder_edited_since_is_refused(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"config.json": '{"a": 1}', "model.safetensors": b"w" * 1000, "sub/tokenizer.json": "{}"})
    files = marker_of(out)["files"]
    assert sorted(files) == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    assert files["config.json"] == "sha256:" + hashlib.sha256(b'{"a": 1}').hexdigest()
    (out / "sub" / "tokenizer.json").write_text('{"added": "by hand"}')
    before = digest_tree(out)
    message = refusal(write_folder, out, {"config.json": "new"}, overwrite=True)
    assert message == (
        f"{out}: holds sub/tokenizer.json, changed since taxcut wrote it (it may hold your edits); "
        "choose another destination"
    )
    assert "changed since taxcut wrote it" in refusal(check_destination, out, overwrite=True, inputs=[])
    assert digest_tree(out) == before
    (out / "sub" / "tokenizer.json").write_text("{}")  # the edit undone: taxcut's again
    write_folder(out, {"config.json": "new"}, overwrite=True)
    assert (out / "config.json").read_text() == "new" and not (out / "sub").exists()


def test_a_file_the_user_removed_does_not_block_overwrite(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"a": "1", "b": "2"})
    (out / "b").unlink()
    write_folder(out, {"a": "3"}, overwrite=True)
    assert (out / "a").read_text() == "3"


def test_large_files_are_checked_by_size_and_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(destination, "_WHOLE_UP_TO", 4096)  # as a weight shard over 64 MiB is
    out = tmp_path / "merged"
    shard = bytes(range(256)) * 4096  # 1 MiB
    write_folder(out, {"model.safetensors": shard})
    assert marker_of(out)["files"]["model.safetensors"].startswith(f"sampled-sha256:{len(shard)}:")
    edited = bytearray(shard)
    edited[0] ^= 1  # the header
    (out / "model.safetensors").write_bytes(bytes(edited))
    assert "holds model.safetensors, changed since" in refusal(write_folder, out, {"a": "b"}, overwrite=True)
    (out / "model.safetensors").write_bytes(shard + b"x")  # appended: the size differs
    assert "holds model.safetensors, changed since" in refusal(write_folder, out, {"a": "b"}, overwrite=True)
    (out / "model.safetensors").write_bytes(shard)
    write_folder(out, {"a": "b"}, overwrite=True)


def test_a_link_retargeted_or_replaced_by_a_folder_is_an_edit(tmp_path):
    out = tmp_path / "lab"
    with staged_folder(out, overwrite=False, inputs=[], kind="lab") as staging:
        (staging / "weights").symlink_to("/nonexistent/a")
        (staging / "plain").write_text("p")
    (out / "weights").unlink()
    (out / "weights").symlink_to("/nonexistent/b")
    assert "holds weights, changed since" in refusal(check_destination, out, overwrite=True, inputs=[], kind="lab")
    (out / "weights").unlink()
    (out / "weights").symlink_to("/nonexistent/a")
    (out / "plain").unlink()
    (out / "plain").mkdir()
    (out / "plain" / "x").write_text("mine")
    assert "taxcut did not write" in refusal(check_destination, out, overwrite=True, inputs=[], kind="lab")


def test_a_folder_written_before_fingerprints_keeps_todays_behaviour(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"a": "1"})
    marker = marker_of(out)
    del marker["files"]
    (out / MARKER).write_text(json.dumps(marker))
    (out / "a").write_text("edited")
    write_folder(out, {"a": "2"}, overwrite=True)
    assert (out / "a").read_text() == "2"


def test_fingerprints_that_cannot_be_checked_make_nothing_taxcuts(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"a": "1"})
    marker = marker_of(out)
    marker["files"] = {"../../etc/passwd": "sha256:0"}
    (out / MARKER).write_text(json.dumps(marker))
    assert "contains 1 file taxcut did not write, e.g. a" in refusal(write_folder, out, {"a": "2"}, overwrite=True)
    assert (out / "a").read_text() == "1"


def test_an_edited_file_of_a_fingerprinted_folder_is_not_replaced_alone(tmp_path):
    out = tmp_path / "merged"
    write_folder(out, {"notes.md": "taxcut's"})
    (out / "notes.md").write_text("the user's")
    message = refusal(write_file, out / "notes.md", "new", overwrite=True)
    assert "is a file taxcut did not write (or one changed since)" in message
    assert (out / "notes.md").read_text() == "the user's"


def test_a_sweeps_growing_results_are_never_an_edit(tmp_path):
    out = tmp_path / "results"
    entries = ["results.jsonl", "report.md", "hma/"]
    claim_folder(out, inputs=[], kind="sweep results", entries=entries)
    for line in range(3):
        with open(out / "results.jsonl", "a") as results:
            results.write(json.dumps({"line": line}) + "\n")
        claim_folder(out, inputs=[], kind="sweep results", entries=entries)  # a resumed sweep
        write_file(out / "report.md", f"report {line}", overwrite=True)
    assert "files" not in marker_of(out)
    assert (out / "results.jsonl").read_text().count("\n") == 3 and (out / "report.md").read_text() == "report 2"


def test_a_fifo_or_link_planted_as_marker_or_sidecar_is_not_read(tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    os.mkfifo(out / MARKER)  # opening it to read would wait for a writer forever
    (out / "a").write_text("mine")
    assert "taxcut did not write" in refusal(write_folder, out, {"a": "b"}, overwrite=True)
    fit = tmp_path / "fit.jsonl"
    write_file(fit, "x")
    sidecar = tmp_path / ".fit.jsonl.taxcut"
    elsewhere = tmp_path / "copied-sidecar"
    sidecar.rename(elsewhere)
    sidecar.symlink_to(elsewhere)
    assert "is a file taxcut did not write" in refusal(write_file, fit, "y", overwrite=True)
    assert fit.read_text() == "x" and (out / "a").read_text() == "mine"
