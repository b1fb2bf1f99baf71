"""Models named by Hugging Face Hub repo ID (``org/name`` or ``org/name@revision``) wherever a folder is accepted.

:func:`resolve_model` turns a reference into a local folder: a path that exists is that folder (a local folder wins
over a Hub repo of the same name); an ``org/name[@revision]`` that does not exist locally is fetched with
``huggingface_hub.snapshot_download`` into the standard cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), with the
token from the environment (``HF_TOKEN``) or the stored login. Only what taxcut reads is fetched: the weights
(from the index when there is one, ``.bin`` files only when no safetensors exist), config, tokenizer files, chat
template, generation config and an adapter's files. With ``HF_HUB_OFFLINE=1`` only the cache is read. The
environment is read at each call, not at import; online, each reference is resolved once per process (so every
load of a run sees the same commit). Which one was used is said once on stderr.

The cache is an input like any other, and may have been tampered with: a revision must name a commit, branch or tag
(never a path), a ``refs`` file must hold a commit hash, and the snapshot must lie inside the cache with every file
in it a link into its own repo's ``blobs`` folder, so a cache can never make taxcut read a file outside itself.
:func:`protected_folders` tells the destination policy what a model input covers (a Hub model: its whole repo
folder in the cache), so nothing is ever written into a model taxcut reads.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from taxcut.errors import TaxcutError, first_line
from taxcut.io.model_folder import SIDE_FILE_GLOBS, SIDE_FOLDERS

# The weight files, in the order taxcut's checkpoint reader prefers them: (index, single file).
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[^\s@]+))?")
_TRUE = {"1", "ON", "YES", "TRUE"}
_COMMIT = re.compile(r"[0-9a-f]{40}")  # how huggingface_hub names a snapshot (and what a refs file holds)
_MAX_REF_BYTES = 4096


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference was found: a local ``path``, and for a Hub model its repo, revision and commit."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None  # as asked for (None: the default branch)
    commit: str | None = None  # the commit hash the cache's snapshot belongs to

    @property
    def from_hub(self) -> bool:
        return self.repo_id is not None

    @property
    def reference(self) -> str:
        """How another tool should name this exact model: ``org/name@commit``, or the folder's absolute path."""
        return f"{self.repo_id}@{self.commit}" if self.from_hub else str(self.path.resolve())

    def record(self) -> dict:
        """What provenance records of a Hub model."""
        return {"repo_id": self.repo_id, "revision": self.revision or "main", "commit": self.commit}


def parse_hub_id(ref: str | os.PathLike[str]) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` if ``ref`` has the form ``org/name`` or ``org/name@revision``, else None."""
    found = _HUB_ID.fullmatch(os.fspath(ref))
    if found is None:
        return None
    repo = found.group("repo")
    if "--" in repo or ".." in repo or repo.endswith(".git") or len(repo) > 96:
        return None
    return repo, found.group("revision")


def is_hub_id(ref: str | os.PathLike[str], folder: Path | None = None) -> bool:
    """Whether ``ref`` names a Hub repo: it has the form ``org/name[@revision]`` and no such path exists (relative
    to ``folder`` when given, else to the working directory). A path that exists shadows the Hub repo: stderr
    says so, once (the README promises it wherever a model is named, a spec file included)."""
    if parse_hub_id(ref) is None:
        return False
    local = (folder or Path()) / Path(ref).expanduser()
    if local.exists():
        _say_shadowed(ref, local)
        return False
    return True


def as_recorded(ref: str | os.PathLike[str]) -> Path:
    """A model reference as a spec or results file should record it: a Hub ID as written, a path made absolute."""
    return Path(ref) if is_hub_id(ref) else Path(ref).expanduser().resolve()


def display_name(ref: str | os.PathLike[str]) -> str:
    """A model's name for a model card: a Hub ID as written, a folder by its last component."""
    return os.fspath(ref) if is_hub_id(ref) else Path(ref).name


def model_path(ref: str | os.PathLike[str]) -> Path:
    """The local folder of a model reference (see :func:`resolve_model`)."""
    return resolve_model(ref).path


def resolve_model(ref: str | os.PathLike[str]) -> ResolvedModel:
    """The local folder of a model reference: the path itself when it exists or is not a Hub ID (a missing folder is
    reported by whoever reads it), else the Hub repo's snapshot in the cache, fetched first unless offline."""
    path = Path(ref).expanduser()
    parsed = parse_hub_id(ref)
    if parsed is None:
        return ResolvedModel(path)
    if path.exists():
        _say_shadowed(ref, path)
        return ResolvedModel(path)
    repo, revision = parsed
    if hub_offline():  # the cache alone: reading a ref file, cheap enough to do at every call
        folder = _snapshot(os.fspath(ref), repo, revision)
        resolved = ResolvedModel(folder, repo, revision, folder.name)
    else:  # once per process: one network round trip, and every load of a run sees the same commit
        key = (repo, revision, hub_cache_dir())
        if key not in _DOWNLOADED:
            folder = _snapshot(os.fspath(ref), repo, revision)
            _DOWNLOADED[key] = ResolvedModel(folder, repo, revision, folder.name)
        resolved = _DOWNLOADED[key]
    _say_once(f"using {os.fspath(ref)} from the Hugging Face Hub (commit {resolved.commit})")
    return resolved


_DOWNLOADED: dict[tuple, ResolvedModel] = {}
_SAID: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        print(f"taxcut: {message}", file=sys.stderr)


def _say_shadowed(ref: str | os.PathLike[str], local: Path) -> None:
    """Say that the local folder ``local`` is used for ``ref`` rather than the Hub repo of that name."""
    shown, name = os.fspath(local), os.fspath(ref)
    of = "of that name" if shown == name else name
    _say_once(f"using the local folder {shown}, not the Hugging Face Hub repo {of}")


def repo_folder(repo: str) -> Path:
    """A Hub repo's folder in the cache as it is now (huggingface_hub's layout: ``models--org--name``)."""
    return Path(hub_cache_dir()) / ("models--" + repo.replace("/", "--"))


def protected_folders(ref: str | os.PathLike[str]) -> list[tuple[Path, bool]]:
    """What no output may touch for the input ``ref``, as ``(path, in_cache)``: the path itself, and for a Hub model
    its whole repo folder in the cache (``in_cache``), whether named by Hub ID or by the path of a snapshot."""
    path, parsed = Path(ref).expanduser(), parse_hub_id(ref)
    if parsed is not None and not path.exists():
        return [(repo_folder(parsed[0]), True)]
    real = Path(os.path.realpath(path))
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return [(real.parent.parent, True), (path, False)]
    return [(path, False)]


def hub_cache_dir() -> str:
    """The Hugging Face Hub cache folder, from the environment as it is now (``HF_HUB_CACHE``, the older
    ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub``, else huggingface_hub's default)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expanduser(os.environ[name])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now, or was when huggingface_hub loaded."""
    from huggingface_hub import constants

    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((value or "").upper() in _TRUE for value in values) or bool(constants.HF_HUB_OFFLINE)


def files_to_fetch(names: Iterable[str]) -> tuple[list[str], str | None]:
    """Of a repo's file names, what taxcut reads: ``(files, index)``, where ``index`` is a weight index whose shards
    must be fetched too once it is read (None when the weights are one file or absent). Safetensors win over
    ``.bin`` as in the checkpoint reader; files in subfolders (other formats, originals) are left out."""
    names = list(names)
    top = [name for name in names if "/" not in name]
    wanted = [name for name in top if any(fnmatchcase(name, glob) for glob in SIDE_FILE_GLOBS + ADAPTER_FILES)]
    wanted += [name for name in names if "/" in name and name.split("/", 1)[0] in SIDE_FOLDERS]
    for index, single in WEIGHT_LAYOUTS:
        if index in top:
            return sorted(wanted + [index]), index
        if single in top:
            return sorted(wanted + [single]), None
    return sorted(wanted), None


def _snapshot(ref: str, repo: str, revision: str | None) -> Path:
    """The repo's snapshot folder in the cache, downloading what taxcut reads unless offline."""
    from huggingface_hub import errors

    _check_revision(ref, revision)
    try:
        if hub_offline():
            return _checked_snapshot(ref, repo, _cached(ref, repo, revision))
        try:
            from huggingface_hub import HfApi

            names = HfApi().list_repo_files(repo, revision=revision)
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
            raise
        except Exception as exc:  # no connection, Hub down: the cache may still have it
            return _checked_snapshot(ref, repo, _cached(ref, repo, revision, unreachable=exc))
        return _checked_snapshot(ref, repo, _download(ref, repo, revision, names))
    except errors.GatedRepoError:
        raise TaxcutError(
            f"{ref}: a gated Hugging Face Hub repo; accept its terms on the Hub and set HF_TOKEN "
            "(or log in with `hf auth login`)"
        ) from None
    except errors.RevisionNotFoundError:
        raise TaxcutError(
            f"{ref}: the Hugging Face Hub repo {repo} has no revision {revision!r}; give an existing "
            "branch, tag or commit"
        ) from None
    except errors.RepositoryNotFoundError:
        raise TaxcutError(
            f"{ref}: neither a local folder nor a model on the Hugging Face Hub (a private repo needs "
            "HF_TOKEN); check the path or the repo ID"
        ) from None
    except errors.HfHubHTTPError as exc:
        raise TaxcutError(f"{ref}: the Hugging Face Hub refused the download ({first_line(exc)})") from None


def _check_revision(ref: str, revision: str | None) -> None:
    """A revision is a commit hash, branch or tag name (``refs/pr/1`` included), never a path: huggingface_hub
    joins it to the cache's ``refs`` folder, to read and, online, to write."""
    if revision is None:
        return
    parts = revision.split("/")
    problem = (
        "holds a NUL character"
        if "\0" in revision
        else "holds a backslash"
        if "\\" in revision
        else "is an absolute path"
        if revision.startswith("/")
        else "has an empty, '.' or '..' component"
        if any(part in ("", ".", "..") for part in parts)
        else "has '..' in it"
        if ".." in revision
        else None
    )
    if problem:
        raise TaxcutError(f"{ref}: the revision {revision!r} {problem}; give a commit hash, branch or tag name")


def _cached(ref: str, repo: str, revision: str | None, unreachable: Exception | None = None) -> Path:
    from huggingface_hub import errors, snapshot_download

    try:
        commit = _cached_commit(repo, revision or "main")  # a checked refs file's commit, else as asked for
        return Path(
            snapshot_download(repo, revision=commit or revision, cache_dir=hub_cache_dir(), local_files_only=True)
        )
    except errors.IncompleteSnapshotError:
        raise TaxcutError(
            f"{ref}: its download in the Hugging Face cache is incomplete; download it again with network access"
        ) from None
    except errors.LocalEntryNotFoundError:
        if unreachable is None:
            raise TaxcutError(
                f"{ref}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1; download it first "
                "or unset HF_HUB_OFFLINE"
            ) from None
        raise TaxcutError(
            f"{ref}: cannot reach the Hugging Face Hub ({first_line(unreachable)}) and it is not in "
            "the local cache; check the connection"
        ) from None


def _cached_commit(repo: str, revision: str) -> str | None:
    """The commit the cache's ``refs/<revision>`` holds (None for a commit hash, or without such a file), refused
    unless it is a file inside ``refs`` holding 40 hex digits (and at most one trailing newline)."""
    if _COMMIT.fullmatch(revision):
        return None
    refs = repo_folder(repo) / "refs"
    path = refs / revision
    if not os.path.lexists(path):
        return None  # huggingface_hub says it is not in the cache
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(Path(os.path.realpath(refs))) or not real.is_file():
        raise TaxcutError(
            f"{path}: not a file inside the cache's refs folder; the Hugging Face cache is damaged "
            "or tampered with: delete this file and download the model again"
        )
    with open(real, "rb") as handle:
        data = handle.read(_MAX_REF_BYTES + 1)
    text = data.decode("ascii", "replace")
    commit = text[:-1] if text.endswith("\n") else text
    if not _COMMIT.fullmatch(commit):
        shown = repr(text[:60]) + ("..." if len(text) > 60 else "")
        raise TaxcutError(
            f"{path}: holds {shown}, not a 40-hex commit hash; the Hugging Face cache is damaged or "
            "tampered with: delete this file and download the model again"
        )
    return commit


def _checked_snapshot(ref: str, repo: str, folder: Path) -> Path:
    """``folder``, once it is known to lie inside the cache and every file in it to resolve inside its repo's
    ``blobs`` folder (huggingface_hub's layout), so that nothing taxcut reads through it comes from elsewhere."""
    cache = Path(os.path.realpath(hub_cache_dir()))
    real = Path(os.path.realpath(folder))
    advice = "the Hugging Face cache is damaged or tampered with: delete it and download the model again"
    if real == cache or not real.is_relative_to(cache):
        raise TaxcutError(f"{folder}: the snapshot of {ref} lies outside the Hugging Face cache {cache}; {advice}")
    blobs = Path(os.path.realpath(repo_folder(repo) / "blobs"))
    for here, dirs, names in os.walk(folder):  # links to folders are not followed: they are names here
        for name in sorted(names + [d for d in dirs if os.path.islink(os.path.join(here, d))]):
            path = Path(here) / name
            target = Path(os.path.realpath(path))
            if not target.is_relative_to(blobs) or target.is_dir():
                raise TaxcutError(
                    f"{path}: a file of the snapshot of {ref} resolves to {target}, not a file in its "
                    f"repo's blobs folder {blobs}; {advice}"
                )
    return folder


def _download(ref: str, repo: str, revision: str | None, names: list[str]) -> Path:
    """Fetch what taxcut reads; an index first (checked before it is read), then the shards it lists (the same
    commit)."""
    from huggingface_hub import snapshot_download

    wanted, index = files_to_fetch(names)
    folder = Path(snapshot_download(repo, revision=revision, cache_dir=hub_cache_dir(), allow_patterns=wanted))
    _checked_snapshot(ref, repo, folder)
    if index is not None:
        try:
            shards = sorted(set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return folder  # the checkpoint reader names what is wrong with the index
        shards = [name for name in shards if isinstance(name, str) and name in names]
        folder = Path(
            snapshot_download(repo, revision=folder.name, cache_dir=hub_cache_dir(), allow_patterns=wanted + shards)
        )
    return folder
