"""Paths written in a spec file: relative ones are relative to the file's folder, and a Hub repo ID stays as
written. Every spec reader (merge, toolkit, mergekit, sweep) resolves its paths with these; the file itself is
read by :func:`taxcut.io.yaml_file.read_yaml_mapping`, within size, alias and nesting limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from taxcut.io.hub import is_hub_id


def file_relative(value: Any, folder: Path) -> Any:
    """A path written in a spec file, made relative to the file's ``folder`` when it is relative (else as is)."""
    if isinstance(value, str) and not Path(value).expanduser().is_absolute():
        return str(folder / value)
    return value


def model_relative(value: Any, folder: Path) -> Any:
    """A model written in a spec file: a Hub repo ID (``org/name[@revision]`` with no such path beside the file)
    as written, else a path, as :func:`file_relative` makes it."""
    if isinstance(value, str) and is_hub_id(value, folder):
        return value
    return file_relative(value, folder)
