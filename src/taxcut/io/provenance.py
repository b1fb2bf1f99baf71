"""What a merged folder says about itself: ``taxcut_provenance.json`` and a short model card (``README.md``)."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import safetensors
import torch

from taxcut.io.checkpoint import Checkpoint
from taxcut.io.hub import resolve_model
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
            {"name": f.path.name, "bytes": f.size, "header_sha256": f.header_sha256,
             "sample_sha256": content_sample_sha256(checkpoint, f.path)}
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


def weights_identity(folder: str | Path) -> list[tuple[str, int, int]]:
    """What changes when a model's weights change, cheaply: each weight file's name, size and modification time.

    (Headers alone do not tell two checkpoints of one architecture apart.) A Hub ID (``org/name[@revision]``) is
    resolved first: its identity is its commit, then its files' names and sizes, so a new commit is a new identity.
    """
    source = resolve_model(folder)
    files = sorted(p for p in source.path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if source.from_hub:
        return [(f"{source.repo_id}@{source.commit}", 0, 0)] + [(p.name, p.stat().st_size, 0) for p in files]
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


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


def write_model_card(folder: Path, *, method: str, inputs: list[tuple[str, str, float]], summary_lines: list[str],
                     spec_yaml: str) -> None:
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
        *[f"- {role[0].upper() + role[1:]}: `{name}`" + (f" (weight {weight:g})" if weighted else "")
          for role, name, weight in inputs],
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
        "model = AutoModelForCausalLM.from_pretrained(\"<this folder>\")",
        "tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")",
        "```",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))
