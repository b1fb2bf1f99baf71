"""The Hugging Face cache as a hostile input: taxcut reads only inside the cache (a revision is
never a path, a refs file holds a commit, a snapshot and its files resolve into the repo's own folders), writes
nothing into it, and says when a local folder shadows a Hub ID. Each case: refused by message, nothing written,
the cache and the inputs unchanged. The cache is laid out offline as in test_hub.py."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from hub_cache import lay_out

from taxcut import MergeSpec, TaxcutError
from taxcut.cli import main
from taxcut.io.checkpoint import Checkpoint
from taxcut.io.hub import resolve_model
from taxcut.spec.evaluation import EvaluationSpec

TESTS = Path(__file__).parent.parent
MERGE = ["merge", "--sft", "org/sft", "--aligned", "org/aligned", "--alpha", "0.5", "--out"]


@pytest.fixture(autouse=True)
def said_afresh(monkeypatch):
    """Each test sees what taxcut says once per process, and leaves other tests' first time alone."""
    import taxcut.io.hub

    monkeypatch.setattr(taxcut.io.hub, "_SAID", set())


def state(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` without following links: a link's target, a file's SHA-256, a folder."""
    found = {}
    for here, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(here) / name
            key = path.relative_to(folder).as_posix()
            found[key] = (
                "-> " + os.readlink(path)
                if path.is_symlink()
                else "dir"
                if path.is_dir()
                else hashlib.sha256(path.read_bytes()).hexdigest()
            )
    return found


def repo(cache: Path, name: str) -> Path:
    return cache / f"models--org--{name}"


def refused(args: list[str], capsys, cache: Path, out: Path, match: str) -> str:
    """Run the CLI: exit 2, one line on stderr holding ``match``, nothing at ``out``, the cache as it was."""
    before = state(cache)
    assert main(args) == 2
    err = capsys.readouterr().err
    error = [line for line in err.splitlines() if line.startswith("taxcut: error:")]
    assert len(error) == 1 and match in error[0], err
    assert not os.path.lexists(out) and state(cache) == before
    return error[0]


# ------------------------------------------------------------------------------------------ reading the cache


@pytest.mark.parametrize(
    "content",
    ["not-a-commit", "../../../../etc/passwd", "", "ABCDEF" * 7, "{commit}\n\n", "{commit} ", "{commit}{commit}"],
)
def test_a_refs_file_that_holds_no_commit_is_refused(hub, tmp_path, capsys, content):
    cache, commits = hub
    ref = repo(cache, "aligned") / "refs" / "main"
    ref.write_text(content.format(commit=commits["aligned"]))
    line = refused([*MERGE, "out"], capsys, cache, tmp_path / "out", f"{ref}: holds ")
    assert "not a 40-hex commit hash" in line and "download the model again" in line


def test_a_refs_file_with_one_trailing_newline_is_read(hub):
    cache, commits = hub
    (repo(cache, "aligned") / "refs" / "main").write_text(commits["aligned"] + "\n")
    assert resolve_model("org/aligned").commit == commits["aligned"]


def test_a_refs_file_that_links_outside_refs_is_refused(hub, tmp_path, capsys):
    cache, commits = hub
    elsewhere = tmp_path / "elsewhere-ref"
    elsewhere.write_text(commits["aligned"])  # a valid commit, but not the cache's own record
    ref = repo(cache, "aligned") / "refs" / "main"
    ref.unlink()
    ref.symlink_to(elsewhere)
    refused([*MERGE, "out"], capsys, cache, tmp_path / "out", f"{ref}: not a file inside the cache's refs folder")
    assert elsewhere.read_text() == commits["aligned"]


@pytest.mark.parametrize(
    ("revision", "problem"),
    [
        ("../../../../elsewhere", "has an empty, '.' or '..' component"),
        ("refs/../../snapshots", "has an empty, '.' or '..' component"),
        ("/tmp/elsewhere", "is an absolute path"),
        ("main//x", "has an empty, '.' or '..' component"),
        ("main/", "has an empty, '.' or '..' component"),
        ("./main", "has an empty, '.' or '..' component"),
        ("v1..v2", "has '..' in it"),
        ("..\\..\\x", "holds a backslash"),
        ("ma\0in", "holds a NUL character"),
    ],
)
def test_a_revision_that_is_a_path_is_refused(hub, tmp_path, capsys, revision, problem):
    cache = hub[0]
    ref = f"org/aligned@{revision}"
    message = f"{ref}: the revision {revision!r} {problem}; give a commit hash, branch or tag name"
    with pytest.raises(TaxcutError, match="^" + re.escape(message) + "$"):
        resolve_model(ref)
    if os.fspath(Path(revision)) == revision:  # the CLI makes --aligned a Path, which drops a stray slash
        refused(
            ["merge", "--sft", "org/sft", "--aligned", ref, "--alpha", "0.5", "--out", "out"],
            capsys,
            cache,
            tmp_path / "out",
            f"the revision {revision!r} {problem}",
        )


def test_a_branch_with_slashes_is_a_revision(hub, tmp_path):
    """A pull request's ref (``refs/pr/1``) is a branch name with slashes: the cache keeps it as refs/refs/pr/1."""
    cache, commits = hub
    lay_out(cache, "org/aligned", build_other(tmp_path), refs=("refs/pr/1",))
    resolved = resolve_model("org/aligned@refs/pr/1")
    assert resolved.revision == "refs/pr/1" and resolved.commit != commits["aligned"]
    assert resolve_model("org/aligned").commit == commits["aligned"]


def build_other(tmp_path: Path) -> Path:
    from models import build_pair

    return build_pair(tmp_path / "other", "llama", seed=7)[1]


def test_a_snapshot_that_links_outside_the_cache_is_refused(hub, tmp_path, capsys, llama_pair):
    cache, commits = hub
    snapshot = repo(cache, "aligned") / "snapshots" / commits["aligned"]
    shutil.rmtree(snapshot)
    snapshot.symlink_to(llama_pair[0])  # a model outside the cache, under the aligned repo's commit
    before = state(llama_pair[0])
    line = refused(
        [*MERGE, "out"],
        capsys,
        cache,
        tmp_path / "out",
        f"{snapshot}: the snapshot of org/aligned lies outside the Hugging Face cache",
    )
    assert "download the model again" in line and state(llama_pair[0]) == before


@pytest.mark.parametrize("target", ["outside", "other repo", "snapshot file"])
def test_a_snapshot_file_outside_its_blobs_is_refused(hub, tmp_path, capsys, target):
    """Every file taxcut may read through a snapshot (weights, index, config, tokenizer) must be one of its repo's
    blobs: a link elsewhere, into another repo's blobs or a plain file in the snapshot is refused."""
    cache, commits = hub
    snapshot = repo(cache, "aligned") / "snapshots" / commits["aligned"]
    victim = snapshot / "config.json"
    if target == "outside":
        secret = tmp_path / "secret.json"
        secret.write_text(victim.read_text())
        replacement = secret
    elif target == "other repo":
        replacement = (repo(cache, "sft") / "snapshots" / commits["sft"] / "config.json").resolve()
    else:
        replacement = None
    text = victim.read_text()
    victim.unlink()
    if replacement is None:
        victim.write_text(text)  # a real file: not what huggingface_hub stores, and nothing vouches for it
    else:
        victim.symlink_to(replacement)
    line = refused(
        [*MERGE, "out"],
        capsys,
        cache,
        tmp_path / "out",
        f"{victim}: a file of the snapshot of org/aligned resolves to ",
    )
    assert f"not a file in its repo's blobs folder {repo(cache, 'aligned').resolve() / 'blobs'}" in line
    with pytest.raises(TaxcutError, match="not a file in its repo's blobs folder"):
        Checkpoint("org/aligned", "aligned")


def test_a_weights_link_out_of_the_snapshot_is_refused_before_it_is_read(hub, tmp_path, capsys, llama_pair):
    cache, commits = hub
    weights = repo(cache, "sft") / "snapshots" / commits["sft"] / "model.safetensors"
    weights.unlink()
    weights.symlink_to(llama_pair[1] / "model.safetensors")  # the aligned weights, passed off as the SFT's
    refused(
        ["plan", "--sft", "org/sft", "--aligned", str(llama_pair[1]), "--alpha", "0.5"],
        capsys,
        cache,
        tmp_path / "nothing",
        f"{weights}: a file of the snapshot of org/sft resolves to ",
    )


# ------------------------------------------------------------------------------------------ writing beside it


def write_targets(cache: Path, commits: dict[str, str]) -> list[Path]:
    """Destinations inside the aligned model's repo folder: the snapshot, its blobs, the repo folder itself."""
    folder = repo(cache, "aligned")
    return [folder / "snapshots" / commits["aligned"] / "out", folder / "blobs" / "out", folder / "out", folder]


def test_merge_writes_nothing_into_the_cache(hub, tmp_path, capsys):
    cache, commits = hub
    for out in write_targets(cache, commits):
        existed = out.exists()
        line = refused(
            [*MERGE, str(out)], capsys, cache, out if not existed else tmp_path / "none", f"{out}: the destination "
        )
        assert f"the Hugging Face cache folder {repo(cache, 'aligned').resolve()} of the aligned model" in line
        assert "write the merge somewhere outside the inputs" in line


def test_a_snapshot_given_as_a_path_protects_its_repo_folder(hub, tmp_path, capsys):
    cache, commits = hub
    snapshot = repo(cache, "sft") / "snapshots" / commits["sft"]
    out = repo(cache, "sft") / "blobs" / "merged"
    refused(
        ["merge", "--sft", str(snapshot), "--aligned", "org/aligned", "--alpha", "0.5", "--out", str(out)],
        capsys,
        cache,
        out,
        f"the Hugging Face cache folder {repo(cache, 'sft').resolve()} of the sft model",
    )


def test_fit_and_sample_write_nothing_into_the_cache(hub, tmp_path, capsys):
    cache, commits = hub
    data = tmp_path / "fit.jsonl"
    data.write_text(json.dumps({"prompt": "w4 w5", "response": "w6"}) + "\n")
    for out in write_targets(cache, commits)[:3]:
        ratios = out.with_name("ratios.yaml")
        refused(
            [
                "fit",
                "--sft",
                "org/sft",
                "--aligned",
                "org/aligned",
                "--data",
                str(data),
                "--alpha",
                "0.5",
                "--blocks",
                "2",
                "--out",
                str(ratios),
            ],
            capsys,
            cache,
            ratios,
            "write the ratios file somewhere outside the inputs",
        )
        fit_set = out.with_name("fit.jsonl")
        refused(
            [
                "sample",
                "--model",
                "org/aligned",
                "--prompts",
                str(data),
                "--reward-function",
                f"{TESTS / 'rewards.py'}:first_word_number",
                "--keep",
                "1",
                "--n",
                "1",
                "--out",
                str(fit_set),
            ],
            capsys,
            cache,
            fit_set,
            "write the fit set somewhere outside the inputs",
        )
    assert data.read_text() == json.dumps({"prompt": "w4 w5", "response": "w6"}) + "\n"


def test_a_sweep_and_an_export_write_nothing_into_the_cache(hub, tmp_path, capsys):
    from test_sweep import write_sweep

    cache, commits = hub
    spec = write_sweep(tmp_path, ("org/sft", "org/aligned"), alphas=(0.0, 1.0), patterns=())
    spec_text = spec.read_text()
    for out in write_targets(cache, commits)[:3]:
        refused(
            ["sweep", str(spec), "--out", str(out), "--no-progress"],
            capsys,
            cache,
            out,
            "write the sweep results somewhere outside the inputs",
        )
    assert spec.read_text() == spec_text
    assert main(["sweep", str(spec), "--no-progress"]) == 0
    capsys.readouterr()
    results = tmp_path / "sweep-out" / "results.jsonl"
    candidate = json.loads(results.read_text().splitlines()[-1])["candidate_id"]
    before = results.read_bytes()
    for out in write_targets(cache, commits)[:3]:
        refused(
            ["export", str(results.parent), "--candidate", candidate, "--out", str(out)],
            capsys,
            cache,
            out,
            "write the merge somewhere outside the inputs",
        )
    assert results.read_bytes() == before


# ------------------------------------------------------------------------------------------ shadowing


def test_a_local_folder_that_shadows_a_hub_id_in_a_spec_says_so(hub, tmp_path, capsys, llama_pair):
    specs = tmp_path / "specs"
    (specs / "org").mkdir(parents=True)
    shutil.copytree(llama_pair[1], specs / "org" / "aligned")  # beside the spec: it wins over the Hub's org/aligned
    (specs / "merge.yaml").write_text(
        yaml.safe_dump({"sft": "org/sft", "aligned": "org/aligned", "alpha": 0.5, "out": "x"})
    )
    for _ in range(2):
        loaded = MergeSpec.from_yaml(specs / "merge.yaml")
        assert (loaded.sft, loaded.aligned) == (Path("org/sft"), specs / "org" / "aligned")
    err = capsys.readouterr().err
    said = f"taxcut: using the local folder {specs / 'org' / 'aligned'}, not the Hugging Face Hub repo org/aligned\n"
    assert err.count(said) == 1 and "org/sft" not in err  # once per process; a Hub ID that is not shadowed: silent
    (specs / "org" / "rm").mkdir()
    reward = EvaluationSpec(reward={"prompts": "p.jsonl", "model": "org/rm"}).relative_to(specs).reward
    assert reward.model == specs / "org" / "rm"
    assert capsys.readouterr().err == (
        f"taxcut: using the local folder {specs / 'org' / 'rm'}, not the Hugging Face Hub repo org/rm\n"
    )
    assert not (specs / "x").exists() and state(specs / "org" / "aligned") == state(llama_pair[1])
