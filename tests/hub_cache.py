"""A Hugging Face cache laid out offline, in huggingface_hub's own format
(``models--org--name/{blobs,refs,snapshots}``), for the tests that resolve Hub repo IDs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def lay_out(cache: Path, repo_id: str, folder: Path, *, refs: tuple[str, ...] = ("main",)) -> str:
    """Put ``folder`` into ``cache`` as one snapshot of ``repo_id``, as huggingface_hub stores a download: files as
    blobs named by their hash, the snapshot's entries relative links to them, each ref a file holding the commit."""
    commit = hashlib.sha1(f"{repo_id} {folder}".encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        entry = repo / "snapshots" / commit / path.relative_to(folder)
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.symlink_to(os.path.relpath(repo / "blobs" / blob, entry.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit
