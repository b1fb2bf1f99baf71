"""What a merged folder says about itself: ``taxcut_provenance.json`` and a short model card (``README.md``)."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import safetensors
import torch

from taxcut.io.checkpoint import Checkpoint
from taxcut.version import __version__

PROVENANCE_FILE = "taxcut_provenance.json"


def fingerprint(checkpoint: Checkpoint) -> dict:
    """A fast fingerprint of a model folder: each weight file's name, size and header hash (no data is hashed)."""
    return {
        "folder": str(checkpoint.folder.resolve()),
        "files": [
            {"name": f.path.name, "bytes": f.size, "header_sha256": f.header_sha256} for f in checkpoint.files
        ],
    }


def weights_identity(folder: Path) -> list[tuple[str, int, int]]:
    """What changes when a folder's weights change, cheaply: each weight file's name, size and modification time.

    (Headers alone do not tell two checkpoints of one architecture apart.)"""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
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
