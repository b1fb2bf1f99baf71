"""Writing a destination folder all at once or not at all.

Everything is written into a hidden staging folder beside the destination (same file system) and renamed into
place only when complete, so a merge that fails or is killed never leaves a half-written model at the
destination. Staging folders left by killed runs are removed by the next run that writes there.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from taxcut.errors import TaxcutError

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.taxcut-(?:partial|old)-(?P<pid>\d+)-")


def check_destination(destination: Path, *, overwrite: bool, inputs: Iterable[tuple[str, Path]]) -> None:
    """Refuse a destination that is, contains or lies inside an input, or that exists without ``overwrite``."""
    target = destination.expanduser().resolve()
    for role, folder in inputs:
        source = folder.expanduser().resolve()
        if target == source or source in target.parents:
            raise TaxcutError(
                f"{destination}: the destination is or lies inside the {role} model folder {folder}; "
                "write the merge somewhere outside the inputs"
            )
        if target in source.parents:
            raise TaxcutError(
                f"{destination}: the destination contains the {role} model folder {folder}; "
                "write the merge somewhere outside the inputs"
            )
    if target.exists() and not target.is_dir():
        raise TaxcutError(f"{destination}: exists and is not a folder; choose another destination")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise TaxcutError(f"{destination}: exists and is not empty; pass --overwrite to replace it")


@contextmanager
def staged_folder(destination: Path, *, overwrite: bool, inputs: Iterable[tuple[str, Path]]) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``destination``, on any failure it is removed."""
    check_destination(destination, overwrite=overwrite, inputs=list(inputs))
    shown, destination = destination, destination.expanduser().resolve()
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(destination)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.taxcut-partial-{os.getpid()}-",
                                        dir=destination.parent))
    except OSError as exc:
        raise TaxcutError(f"{shown}: cannot write there ({exc.strerror or exc}); choose another destination") from None
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the published folder gets ordinary permissions
    try:
        yield staging
        _publish(staging, destination)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        where = f" at {exc.filename}" if exc.filename else ""
        raise TaxcutError(
            f"{shown}: the merge failed ({exc.strerror or exc}{where}); nothing was written there"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, destination: Path) -> None:
    if not destination.exists():
        os.rename(staging, destination)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.taxcut-old-{os.getpid()}-", dir=destination.parent))
    os.rename(destination, retired / "content")
    os.rename(staging, destination)
    shutil.rmtree(retired, ignore_errors=True)


def remove_leftovers(destination: Path) -> None:
    """Delete staging folders of ``destination`` whose process is gone (killed merges)."""
    for entry in destination.parent.iterdir():
        found = _LEFTOVER.match(entry.name)
        if found and found.group("name") == destination.name and not _process_alive(int(found.group("pid"))):
            shutil.rmtree(entry, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
