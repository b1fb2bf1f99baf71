"""One destination policy for everything taxcut writes: models, labs, results folders, ratios files, fit sets.

This module decides what may be written where and what taxcut wrote, and holds the entry points that apply it
(:func:`staged_folder`, :func:`staged_file`, :func:`claim_folder`); the machinery they publish with (staging, the
exclusive rename, the lock, sweeping what killed runs left) is :mod:`taxcut.io.publish`.

The rules:

1. An empty or whitespace path is refused (:func:`destination_path`): an unset shell variable must not turn
   ``--out "$OUT"`` into the current folder.
2. A destination that is, contains or lies inside an input (model and adapter folders, data files, the spec file
   itself), compared after resolving symlinks and by (device, inode) of the folders on both paths (so another
   mount of an input, e.g. a bind mount, is seen too), is refused. A model from the Hugging Face cache (named by
   Hub ID or by its snapshot's path) covers its whole repo folder there (``models--org--name``: snapshots, blobs, refs).
3. An existing destination is replaced only with ``overwrite``, and only if taxcut wrote it (see *Markers*); an
   empty folder counts as free and needs no ``overwrite``. Anything else is refused with a line saying what was
   found there.
4. Everything is written to a hidden staging folder or file beside the destination (same file system) and renamed
   into place only when complete: a failed or killed run leaves no destination, and a failed one no staging.
5. The final rename is exclusive: of two runs writing one destination at once exactly one succeeds; the other
   fails with "... was written by another run meanwhile; nothing of this run was kept". A new destination is
   published with a no-replace rename; a replaced one is swapped in atomically, under a lock beside the
   destination, after checking that what is there is still what was checked when the run began.
6. Any run that stages in a folder removes the staging of killed runs there: once their process is gone (same
   machine), or after :data:`~taxcut.io.publish.STALE_AFTER_S` when they were made on another machine. Staging is
   known by its name and the mark taxcut wrote with it, never by the name alone.

Markers (how taxcut knows it wrote something):

- A folder taxcut wrote holds :data:`MARKER` (``.taxcut``, JSON: ``written_by``, ``kind``, ``entries``). The
  entries are the files it wrote (relative paths; a name ending in ``/`` covers a whole subfolder); any other
  file found there is the user's, and makes the folder irreplaceable. A folder written whole (``staged_folder``)
  also records each file's content fingerprint (``files``, see :func:`_content_fingerprint`): a file edited since
  makes it irreplaceable too. A folder taxcut keeps adding to (``claim_folder``: a sweep's appended results) has
  no fingerprints, nor has one written before them; there the list of names alone decides. Model folders written
  before the marker existed are recognised by ``taxcut_provenance.json`` beside nothing but model-folder files.
- A single file taxcut wrote has a sidecar ``.NAME.taxcut`` beside it recording the SHA-256 of the bytes it
  wrote, so the file's format is untouched (readers need not skip anything) and a file edited since is no
  longer taxcut's. A file listed in the marker of its folder (a report inside a results folder) needs none.

How callers use it::

    out = destination_path(args.out, "--out")       # the raw text, before Path() or joining it to a folder
    inputs = [("sft", spec.sft), ("aligned", spec.aligned), ("spec", spec_file)]   # None entries are skipped
    check_destination(out, overwrite=args.overwrite, inputs=inputs)   # optional: fail fast before long work
    with staged_folder(out, overwrite=args.overwrite, inputs=inputs, kind="merge") as staging:
        ...                                         # write everything into ``staging``
    with staged_file(out, overwrite=args.overwrite, inputs=inputs, kind="fit set") as partial:
        partial.write_text(text)                    # the temporary file keeps the destination's suffix
    folder = claim_folder(out, inputs=inputs, kind="sweep results", entries=["results.jsonl", "hma/"])
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path

from taxcut.errors import TaxcutError
from taxcut.io.hub import protected_folders
from taxcut.io.model_folder import SIDE_FILE_GLOBS, SIDE_FOLDERS
from taxcut.io.publish import (
    _LOCK_SUFFIX,
    _SIDECAR_SUFFIX,
    _STAGING,
    _STAGING_MARK,
    _discard,
    _exchange,
    _finish,
    _is_marked_staging,
    _make_staging,
    _publish_lock,
    _read_plain,
    _rename_noreplace,
    _write_atomically,
    quoted,
)
from taxcut.version import __version__

MARKER = ".taxcut"
Inputs = Iterable[tuple[str, "str | os.PathLike[str] | None"]]

_LEGACY_MODEL_FILES = ("*.safetensors", "model.safetensors.index.json", "taxcut_provenance.json", "README.md")
_MAX_LISTED = 1000  # stop counting a foreign folder's files here (a home folder could hold millions)
_WHOLE_UP_TO, _SAMPLES, _SAMPLE_BYTES = 64 * 2**20, 64, 64 * 2**10  # see _content_fingerprint


# ---------------------------------------------------------------------------------------------------- checking


def destination_path(raw: str | os.PathLike[str] | None, what: str = "--out") -> Path:
    """Validate the destination exactly as the user gave it, and return it as a :class:`Path`.

    Call it on the raw text (the CLI argument parsed as ``str``, the spec field before it is joined to the spec's
    folder): ``Path("")`` is ``Path(".")``, so an empty value can no longer be told apart once it is a Path.
    ``what`` names the source in the message ("--out", "'out' in sweep.yaml"). An explicit ``.`` is accepted.
    """
    if raw is None:
        raise TaxcutError(f"no destination: give {what}")
    text = os.fspath(raw)
    if not text.strip():
        raise TaxcutError(
            f"{what} is empty ({text!r}); give the path to write (an unset shell variable gives an empty value)"
        )
    if "\0" in text:
        raise TaxcutError(f"{what} contains a NUL character; give a valid path")
    return Path(text).expanduser()


def check_destination(
    destination: str | os.PathLike[str], *, overwrite: bool, inputs: Inputs, kind: str = "merge", folder: bool = True
) -> None:
    """Raise :class:`TaxcutError` unless ``destination`` may be written (rules 1-3 of the module docstring).

    ``inputs`` are ``(role, path)`` pairs, files or folders; ``kind`` names the output in messages; ``folder``
    says whether a folder or a single file will be written there. The staging functions check this themselves;
    call it first only to fail before long work.
    """
    shown, target = _target(destination, list(inputs), kind)
    _examine(shown, target, overwrite=overwrite, folder=folder)


def _target(destination: str | os.PathLike[str], inputs: list, kind: str) -> tuple[str, Path]:
    raw = os.fspath(destination)
    if not raw.strip():
        raise TaxcutError("the destination is empty; give the path to write")
    shown = quoted(raw)  # a newline in the path must not break the one-line message
    target = Path(os.path.realpath(Path(raw).expanduser()))
    identities = _identities(target)
    if target == target.parent:
        raise TaxcutError(f"{shown}: the root folder cannot be a destination; give a folder below it")
    for role, given in inputs:
        if given is None or not os.fspath(given):
            continue
        for protected, in_cache in protected_folders(given):  # a Hub model: its repo folder in the cache too
            source = Path(os.path.realpath(protected))
            thing = "folder" if source.is_dir() else "file"
            thing = "" if role.endswith(thing) else f" {thing}"  # "the results file", never "results file file"
            named = (
                f"the Hugging Face cache folder {source} of the {role} model {quoted(given)}"
                if in_cache
                else f"the {role}{thing} {quoted(given)}"
            )
            relation = _relation(target, source, identities)
            if relation is None:
                continue
            raise TaxcutError(
                f"{shown}: the destination {relation} {named}; write the {kind} somewhere outside the inputs"
            )
    return shown, target


def _relation(target: Path, source: Path, identities: tuple | None = None) -> str | None:
    """How ``target`` stands to the input ``source``: "is", "lies inside", "contains", or None when apart.

    Compared by resolved path, then by (device, inode) of each existing folder on both paths: one folder reached
    two ways (a bind mount, a second mount of the same file system) has two paths but one identity. ``identities``
    are the target's, from :func:`_identities`, when the caller compares it with several inputs.
    """
    if target == source:
        return "is"
    if source in target.parents:
        return "lies inside"
    if target in source.parents:
        return "contains"
    mine, above_mine = identities or _identities(target)
    theirs, above_theirs = _identities(source)
    if theirs is not None and theirs == mine:
        return "is (through another path or mount)"
    if theirs is not None and theirs in above_mine:
        return "lies (through another path or mount) inside"
    if mine is not None and mine in above_theirs:
        return "contains (through another path or mount)"
    return None


def _identities(path: Path) -> tuple[tuple[int, int] | None, set[tuple[int, int]]]:
    """(device, inode) of ``path`` (None if it does not exist) and of each of its existing ancestors."""

    def identity(where: Path) -> tuple[int, int] | None:
        try:
            found = os.stat(where)
        except (OSError, ValueError):
            return None
        return found.st_dev, found.st_ino

    above = {identity(parent) for parent in path.parents} - {None}
    return identity(path), above


def _examine(shown: str, target: Path, *, overwrite: bool, folder: bool) -> tuple[int, int] | None:
    """Refuse what may not be replaced; return the identity (device, inode) of what is there, None if nothing."""
    try:
        found = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (making the staging says why it cannot be)
        return None
    except OSError as exc:
        raise TaxcutError(f"{shown}: cannot look there ({exc.strerror or exc}); choose another destination") from None
    problem = _not_ours(target, folder=folder)
    if problem:
        raise TaxcutError(f"{shown}: {problem}; choose another destination")
    if not overwrite and not (folder and not _files(target, limit=1)):
        what = "exists and is not empty" if folder else "exists"
        raise TaxcutError(f"{shown}: {what}; pass --overwrite to replace it")
    return found.st_dev, found.st_ino


def _not_ours(target: Path, *, folder: bool) -> str | None:
    """Why ``target`` may not be replaced by a ``folder`` (or a file), or None when taxcut wrote it (or it is empty)."""
    is_dir = target.is_dir() and not target.is_symlink()
    if folder and not is_dir:
        return "exists and is a file, not a folder"
    if not folder:
        if is_dir:
            return "exists and is a folder, not a file"
        return None if _file_is_ours(target) else "is a file taxcut did not write (or one changed since)"
    files = _files(target, owned=_owned_in(target), limit=_MAX_LISTED)
    if files:
        return _foreign(files)
    edited = _edited(target)
    return f"holds {quoted(edited)}, changed since taxcut wrote it (it may hold your edits)" if edited else None


def _foreign(files: list[str]) -> str:
    more = "more than " if len(files) >= _MAX_LISTED else ""
    noun = "file" if len(files) == 1 else "files"
    example = min(files, key=lambda relative: (relative.count("/"), relative))
    return f"contains {more}{len(files)} {noun} taxcut did not write, e.g. {quoted(example)}"


def _files(folder: Path, owned=lambda relative: False, limit: int | None = None) -> list[str]:
    """The files under ``folder`` (relative paths; symlinks count as files) that ``owned`` does not claim."""
    found: list[str] = []
    for here, dirs, names in os.walk(folder):
        base = Path(here).relative_to(folder)
        names = names + [d for d in dirs if os.path.islink(os.path.join(here, d))]
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(here, d)))
        for name in sorted(names):
            relative = (base / name).as_posix()
            if not _is_housekeeping(Path(here, name)) and not owned(relative):
                found.append(relative)
                if limit is not None and len(found) >= limit:
                    return found
    return found


def _is_housekeeping(path: Path) -> bool:
    """Taxcut's own small files: the marker, sidecars, locks and staging with its mark (never the user's data: a
    file merely named like staging is the user's)."""
    name = path.name
    staging = _STAGING.match(name) is not None and (name.endswith(_STAGING_MARK) or _is_marked_staging(path))
    return (
        name in (MARKER, _STAGING_MARK)
        or staging
        or name.endswith(_LOCK_SUFFIX)
        or (name.startswith(".") and name.endswith(_SIDECAR_SUFFIX))
    )


def _owned_in(folder: Path):
    """A predicate: did taxcut write this relative path in ``folder``?"""
    marker = _read_marker(folder)
    if marker is not None:
        entries = set(marker["entries"])
        return lambda relative: _listed(relative, entries)
    if _is_legacy_model_folder(folder):

        def legacy(relative: str) -> bool:
            top, _, rest = relative.partition("/")
            if rest:
                return top in SIDE_FOLDERS
            return any(fnmatchcase(top, glob) for glob in (*_LEGACY_MODEL_FILES, *SIDE_FILE_GLOBS))

        return legacy
    return lambda relative: False


def _listed(relative: str, entries: set[str]) -> bool:
    """Is ``relative`` one of ``entries``, or inside an entry that names a whole subfolder (``"hma/"``)?"""
    parts = relative.split("/")
    return relative in entries or any("/".join(parts[:i]) + "/" in entries for i in range(1, len(parts)))


def _read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads(_read_plain(folder / MARKER, 64 * 2**20) or b"null")
    except ValueError:
        return None
    if (
        not isinstance(marker, dict)
        or marker.get("written_by") != "taxcut"
        or not isinstance(marker.get("entries"), list)
        or not all(isinstance(e, str) for e in marker["entries"])
    ):
        return None
    files, entries = marker.get("files", {}), set(marker["entries"])
    if not isinstance(files, dict) or not all(
        isinstance(name, str) and isinstance(value, str) and name in entries and ".." not in name.split("/")
        for name, value in files.items()
    ):
        return None  # fingerprints that cannot be checked: nothing in the folder counts as taxcut's
    return marker


def _is_legacy_model_folder(folder: Path) -> bool:
    """A model folder merged before the marker existed: its provenance file names the taxcut version."""
    try:
        record = json.loads((folder / "taxcut_provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "taxcut_version" in record


def _sidecar(path: Path) -> Path:
    name = path.name if len(path.name) <= 200 else f"{path.name[:150]}.{_digest(path.name.encode())[:12]}"
    return path.with_name(f".{name}{_SIDECAR_SUFFIX}")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_fingerprint(path: Path) -> str:
    """What an edit to a file taxcut wrote changes; recorded in a folder's marker when it is written and checked
    before ``overwrite`` replaces the folder.

    A file up to 64 MiB (config, tokenizer, chat template, model card) is hashed whole (``sha256:HEX``). A larger one
    (weight shards) is fingerprinted by its size and 64 blocks of 64 KiB spread evenly from its first byte to its
    last (``sampled-sha256:SIZE:HEX``): about 4 MB read per shard, so checking a 140 GB model takes seconds, not
    the minutes a full hash would; an edit that changes neither the size, the header nor a sampled block of a
    shard goes unnoticed. A link is fingerprinted by where it points, never followed; anything but a file or a
    link never matches.
    """
    found = os.lstat(path)
    if stat.S_ISLNK(found.st_mode):
        return f"link:{_digest(os.fsencode(os.readlink(path)))}"
    if not stat.S_ISREG(found.st_mode):
        return "not a file"
    if found.st_size <= _WHOLE_UP_TO:
        return f"sha256:{_file_digest(path)}"
    digest = hashlib.sha256(str(found.st_size).encode())
    step = (found.st_size - _SAMPLE_BYTES) / (_SAMPLES - 1)
    with open(path, "rb") as handle:
        for number in range(_SAMPLES):
            handle.seek(round(number * step))
            digest.update(handle.read(_SAMPLE_BYTES))
    return f"sampled-sha256:{found.st_size}:{digest.hexdigest()}"


def _unchanged(path: Path, recorded: str | None) -> bool:
    """Does ``path`` still hold what taxcut wrote? True where nothing was recorded (markers before fingerprints)."""
    if recorded is None:
        return True
    try:
        return _content_fingerprint(path) == recorded
    except OSError:
        return False


def _edited(folder: Path) -> str | None:
    """The first file of ``folder`` changed since taxcut wrote it (per its marker's fingerprints), else None.
    A file the user removed is not reported: there is nothing of theirs to lose."""
    marker = _read_marker(folder) or {}
    for relative, recorded in sorted(marker.get("files", {}).items()):
        if os.path.lexists(folder / relative) and not _unchanged(folder / relative, recorded):
            return relative
    return None


def _file_is_ours(path: Path) -> bool:
    marker = _read_marker(path.parent)
    if marker is not None and _listed(path.name, set(marker["entries"])):
        return _unchanged(path, marker.get("files", {}).get(path.name))
    try:
        record = json.loads(_read_plain(_sidecar(path), 2**20) or b"null")
        accepted = record["sha256"] if record.get("written_by") == "taxcut" else []
    except (ValueError, KeyError, AttributeError):
        return False
    if not stat.S_ISREG(os.lstat(path).st_mode):  # a link or a FIFO put there since: not read, not taxcut's
        return False
    return isinstance(accepted, list) and _file_digest(path) in accepted


# ---------------------------------------------------------------------------------------------------- writing


@contextmanager
def staged_folder(
    destination: str | os.PathLike[str], *, overwrite: bool, inputs: Inputs, kind: str = "merge"
) -> Iterator[Path]:
    """Yield an empty staging folder beside ``destination``; when the block ends it is published there.

    Published means: :data:`MARKER` listing every file written is added, and the folder is renamed into place
    (exclusively: see the module docstring). On any failure the staging folder is removed and nothing appears at
    the destination; an ``OSError`` (disk full, permissions) becomes a one-line :class:`TaxcutError`.
    """
    with _staged(destination, overwrite=overwrite, inputs=inputs, kind=kind, folder=True) as staging:
        yield staging


@contextmanager
def staged_file(destination: str | os.PathLike[str], *, overwrite: bool, inputs: Inputs, kind: str) -> Iterator[Path]:
    """Yield a temporary file beside ``destination`` (empty, same suffix); when the block ends it is published there.

    For fit sets, ratios files and single reports. A sidecar ``.NAME.taxcut`` records the bytes taxcut wrote, so
    a later ``overwrite`` can tell the file is taxcut's; inside a folder whose marker lists the name (a results
    folder's reports) none is written. Failures behave as in :func:`staged_folder`.
    """
    with _staged(destination, overwrite=overwrite, inputs=inputs, kind=kind, folder=False) as staging:
        yield staging


@contextmanager
def _staged(destination, *, overwrite: bool, inputs: Inputs, kind: str, folder: bool) -> Iterator[Path]:
    """What :func:`staged_folder` and :func:`staged_file` share: check, stage, publish exclusively, clean up."""
    shown, target = _target(destination, list(inputs), kind)
    expected = _examine(shown, target, overwrite=overwrite, folder=folder)
    staging = _make_staging(shown, target, folder=folder)
    try:
        yield staging
        if folder:
            written = _files(staging)
            _write_marker(staging, kind, written, {name: _content_fingerprint(staging / name) for name in written})
        replaced = _publish(shown, target, staging, expected, overwrite=overwrite, folder=folder)
    except OSError as exc:
        _discard(staging)
        raise TaxcutError(f"{shown}: writing the {kind} failed ({_reason(exc)}); nothing was written there") from None
    except BaseException:
        _discard(staging)
        raise
    _finish(staging, target, replaced, folder=folder)


def claim_folder(destination: str | os.PathLike[str], *, inputs: Inputs, kind: str, entries: Iterable[str]) -> Path:
    """Make ``destination`` a folder taxcut keeps adding to (a sweep's results), and return it.

    ``entries`` are the names this kind of folder holds (``"hma/"`` for a whole subfolder). A new or empty folder
    gets the marker; a folder with the marker of the same ``kind`` is reused as it is (a resumed sweep), its
    entries extended; a folder without a marker is adopted only if every file in it has one of those names (made
    by a version of taxcut before the marker). Anything else is refused. Nothing is deleted.
    """
    raw = os.fspath(destination)
    shown, target = _target(destination, list(inputs), kind)
    entries = sorted(set(entries))
    try:
        if not os.path.lexists(target):
            staging = _make_staging(shown, target, folder=True)
            try:
                _write_marker(staging, kind, entries)
                _publish(shown, target, staging, None, overwrite=False, folder=True)
                _finish(staging, target, None, folder=True)
                return Path(raw).expanduser()
            except TaxcutError:  # created meanwhile by another run: judge what is there now
                _discard(staging)
            except BaseException:
                _discard(staging)
                raise
        with _publish_lock(target):
            if not target.is_dir() or target.is_symlink():
                raise TaxcutError(f"{shown}: exists and is a file, not a folder; choose another destination")
            marker = _read_marker(target)
            if marker is not None and marker.get("kind") != kind:
                raise TaxcutError(
                    f"{shown}: is a {marker.get('kind')} folder taxcut wrote, not a {kind} folder; "
                    "choose another destination"
                )
            known = set(entries) | set(marker["entries"] if marker else [])
            foreign = _files(target, owned=lambda relative: _listed(relative, known), limit=_MAX_LISTED)
            if foreign:
                raise TaxcutError(f"{shown}: {_foreign(foreign)}; choose another destination")
            if marker is None or known != set(marker["entries"]):
                _write_marker(target, kind, sorted(known))
    except OSError as exc:
        raise TaxcutError(f"{shown}: cannot write there ({_reason(exc)}); choose another destination") from None
    return Path(raw).expanduser()


def _reason(exc: OSError) -> str:
    where = f" at {quoted(exc.filename)}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _write_marker(folder: Path, kind: str, entries: list[str], fingerprints: dict[str, str] | None = None) -> None:
    """Write the marker; ``fingerprints`` (see :func:`_content_fingerprint`) only for a folder written whole: a
    folder taxcut keeps adding to (a sweep's results, appended to) has none, so its growth is never an edit."""
    marker = {"written_by": "taxcut", "taxcut_version": __version__, "kind": kind, "entries": sorted(entries)}
    if fingerprints:
        marker["files"] = dict(sorted(fingerprints.items()))
    _write_atomically(folder / MARKER, json.dumps(marker, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------- publishing


def _publish(
    shown: str, target: Path, staging: Path, expected: tuple[int, int] | None, *, overwrite: bool, folder: bool
) -> Path | None:
    """Move ``staging`` to ``target`` if nothing changed there since it was examined; return what it replaced."""
    meanwhile = f"{shown}: was written by another run meanwhile; nothing of this run was kept"
    digest = None if folder else _file_digest(staging)
    with _publish_lock(target):
        try:
            found = os.lstat(target)
        except FileNotFoundError:
            found = None
        if found is not None and (found.st_dev, found.st_ino) != expected:
            raise TaxcutError(meanwhile)
        sidecar = not folder and not _listed(target.name, set((_read_marker(target.parent) or {}).get("entries", [])))
        if found is None:
            try:
                _rename_noreplace(staging, target, folder=folder)
            except FileExistsError:
                raise TaxcutError(meanwhile) from None
            replaced = None
        else:
            _examine(shown, target, overwrite=overwrite, folder=folder)  # still taxcut's, nothing added since
            if sidecar:
                _write_sidecar(target, [digest, _file_digest(target)])  # either is taxcut's while they swap
            replaced = _exchange(staging, target, folder=folder)
        if sidecar:
            _write_sidecar(target, [digest])
    return replaced


def _write_sidecar(path: Path, digests: list[str]) -> None:
    record = {"written_by": "taxcut", "file": path.name, "sha256": digests}
    _write_atomically(_sidecar(path), json.dumps(record) + "\n")
