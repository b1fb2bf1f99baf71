"""What a merged folder says about itself: ``taxcut_provenance.json`` and a short model card (``README.md``)."""

from __future__ import annotations

import copy
import hashlib
import json
import platform
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path

import safetensors
import torch

from taxcut.io.checkpoint import Checkpoint
from taxcut.io.hub import resolve_model
from taxcut.io.model_folder import SIDE_FILE_GLOBS, SIDE_FOLDERS
from taxcut.version import __version__

PROVENANCE_FILE = "taxcut_provenance.json"


SAMPLE_WINDOWS, SAMPLE_BYTES = 8, 4096  # per tensor: 8 evenly spaced windows of 4 KiB (all of a small tensor)


def fingerprint(checkpoint: Checkpoint) -> dict:
    """A fingerprint of a model folder that tells two models of one architecture apart: each weight file's name,
    size, header hash and ``sample_sha256``, a hash of a deterministic sample of every tensor's bytes (see
    :func:`content_sample_sha256`; an adapter's small file is hashed whole). A Hub model adds its repo, revision
    and commit (``hub``; an adapter's base on the Hub: ``base_hub``)."""
    record = {
        "folder": str(checkpoint.folder.resolve()),
        "files": [
            {
                "name": f.path.name,
                "bytes": f.size,
                "header_sha256": f.header_sha256,
                "sample_sha256": content_sample_sha256(checkpoint, f.path),
            }
            for f in checkpoint.files
        ],
    }
    adapter = checkpoint.adapter
    for key, source in (("hub", checkpoint.source), ("base_hub", adapter.base_source if adapter else None)):
        if source is not None and source.from_hub:
            record[key] = source.record()
    return record


def content_sample_sha256(checkpoint: Checkpoint, path: Path) -> str:
    """SHA-256 over each tensor of the weight file ``path`` (in stored order): its name and up to
    ``SAMPLE_WINDOWS`` windows of ``SAMPLE_BYTES`` bytes, evenly spaced from the first byte of its data to the last
    (the whole tensor when it is smaller). Training changes nearly every element of a tensor, so any sample tells a
    model from its fine-tune; the cost is a few hundred small reads, whatever the model's size."""
    digest = hashlib.sha256()
    adapter = checkpoint.adapter
    if adapter is not None and path == adapter.weights_file:
        digest.update(path.read_bytes())  # two low-rank matrices per module: small
        return digest.hexdigest()
    in_file = [info for info in checkpoint.tensors.values() if info.file == path]
    for info in sorted(in_file, key=lambda info: (info.data_offset, info.name)):
        digest.update(info.name.encode() + b"\0")
        size = info.nbytes
        if size <= SAMPLE_WINDOWS * SAMPLE_BYTES:
            digest.update(checkpoint.stored_bytes(info, 0, size))
            continue
        for index in range(SAMPLE_WINDOWS):
            start = index * (size - SAMPLE_BYTES) // (SAMPLE_WINDOWS - 1)
            digest.update(checkpoint.stored_bytes(info, start, SAMPLE_BYTES))
    return digest.hexdigest()


def weights_identity(folder: str | Path, *, full: bool = False, cached: bool = True) -> list[dict]:
    """What a model's results depend on, read cheaply: each weight file's name, size and ``sample_sha256``
    (:func:`content_sample_sha256`), each side file a merge copies (config, generation config, tokenizer, chat
    template: :data:`taxcut.io.model_folder.SIDE_FILE_GLOBS`) with its SHA-256, and a Hub model's commit.

    File times play no part: a weight file rewritten in place with its time restored is a change, a touched one is
    not. ``full`` adds each weight file's whole-file SHA-256 (reads every byte). ``cached``: a folder whose files
    kept their sizes, times and inode-change times (which no user can set back) is not read again in this process.
    """
    source = resolve_model(folder)
    key = (str(source.path), full)
    if cached and key in _IDENTITIES and _IDENTITIES[key][1] == _stat_signature(_IDENTITIES[key][0]):
        return copy.deepcopy(_IDENTITIES[key][2])
    with Checkpoint(folder) as checkpoint:
        folders = checkpoint.side_file_folders
        signature = _stat_signature(folders)  # before reading: a write while it reads is seen next time
        hub = [("hub", checkpoint.source), ("base_hub", checkpoint.adapter.base_source if checkpoint.adapter else None)]
        identity: list[dict] = [{role: found.reference} for role, found in hub if found is not None and found.from_hub]
        for weight in checkpoint.files:
            entry = {
                "file": weight.path.name,
                "bytes": weight.size,
                "sample_sha256": content_sample_sha256(checkpoint, weight.path),
            }
            identity.append({**entry, "sha256": file_sha256(weight.path)} if full else entry)
    identity += [
        {"file": name, "bytes": path.stat().st_size, "sha256": file_sha256(path)} for name, path in side_files(folders)
    ]
    _IDENTITIES[key] = (folders, signature, identity)
    return copy.deepcopy(identity)


_IDENTITIES: dict[tuple[str, bool], tuple[list[Path], tuple, list[dict]]] = {}


def side_files(folders: list[Path]) -> list[tuple[str, Path]]:
    """The files a merge copies from ``folders`` (a later folder's file of one name wins, as when copying), by the
    name they get in the merged folder."""
    found: dict[str, Path] = {}
    for folder in folders:
        for entry in sorted(folder.iterdir()):
            if entry.is_file() and any(fnmatchcase(entry.name, glob) for glob in SIDE_FILE_GLOBS):
                found[entry.name] = entry
            elif entry.is_dir() and entry.name in SIDE_FOLDERS:
                found.update(
                    {
                        inner.relative_to(folder).as_posix(): inner
                        for inner in sorted(entry.rglob("*"))
                        if inner.is_file()
                    }
                )
    return sorted(found.items())


def _stat_signature(folders: list[Path]) -> tuple:
    """Every entry of ``folders`` (and their side folders) with its size, times and inode: equal signatures mean
    no file was written, replaced, added or removed since."""
    signature = []
    for folder in folders:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
        entries += [inner for name in SIDE_FOLDERS if (folder / name).is_dir() for inner in (folder / name).rglob("*")]
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                signature.append((str(entry), None))
                continue
            signature.append((str(entry), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev))
    return tuple(signature)


def file_sha256(path: Path) -> str:
    """SHA-256 of a whole file, read in chunks of 4 MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_provenance(folder: Path, record: dict) -> None:
    full = {
        "taxcut_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "python_version": platform.python_version(),
        **record,
    }
    (folder / PROVENANCE_FILE).write_text(json.dumps(full, indent=2) + "\n")


def write_model_card(
    folder: Path, *, method: str, inputs: list[tuple[str, str, float]], summary_lines: list[str], spec_yaml: str
) -> None:
    """A short README.md: what was merged, how, and how to load it. ``inputs`` are (role, folder name, weight)."""
    weighted = any(weight != 1.0 for _, _, weight in inputs)
    lines = [
        "---",
        "tags: [taxcut, merge]",
        "library_name: transformers",
        "---",
        "",
        "# Merged model (taxcut)",
        "",
        f"Method: {method}.",
        "",
        *[
            f"- {role[0].upper() + role[1:]}: `{name}`" + (f" (weight {weight:g})" if weighted else "")
            for role, name, weight in inputs
        ],
        *[f"- {line}" for line in summary_lines],
        "",
        "## Spec",
        "",
        "```yaml",
        spec_yaml.rstrip(),
        "```",
        "",
        f"Provenance (resolved spec, input fingerprints, versions): `{PROVENANCE_FILE}`.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("<this folder>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this folder>")',
        "```",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))
