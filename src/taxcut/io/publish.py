"""How taxcut puts a finished output in place: staging beside the destination, an exclusive rename, sweeping.

The machinery under :mod:`taxcut.io.destination`, which decides what may be written where, recognises what taxcut
wrote (markers, sidecars) and holds the entry points (``staged_folder``, ``staged_file``, ``claim_folder``). Nothing
here judges a destination:

- Staging: a hidden folder or file beside the destination (same file system), named
  ``.NAME.taxcut-partial-PID-HOST-...`` after the writing process and a tag of its machine, to be renamed into place
  when complete. Small files (markers, sidecars) are replaced atomically the same way.
- Exclusive renames: a new destination is put in place with Linux ``renameat2`` and ``RENAME_NOREPLACE`` (else a
  hard link for a file, else a check and a rename under the lock), so nothing that appeared meanwhile is replaced;
  a replaced one is swapped in with ``RENAME_EXCHANGE`` (else ``os.replace`` for a file, two renames for a folder)
  and what it replaced is removed afterwards.
- Locking: publishing holds an exclusive ``flock`` on ``.NAME.taxcut-lock`` beside the destination. The kernel
  releases the lock of a killed process, so a lock is never stale; where there are no locks, the no-replace rename
  alone decides.
- Sweeping: making a staging first removes what killed runs left in that folder (:func:`sweep_stale_staging`):
  their staging once their process is gone (same machine) or after :data:`STALE_AFTER_S` (made on another machine),
  lock files nobody holds, and sidecars whose file is gone.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from taxcut.errors import TaxcutError

try:
    import fcntl
except ImportError:  # not a POSIX system: publishing relies on the no-replace rename alone
    fcntl = None

STALE_AFTER_S = 7 * 24 * 3600  # staging made on another machine is removed only after this long untouched

_STAGING = re.compile(r"^\..+\.taxcut-(?:partial|old)-(?P<pid>\d+)-(?:(?P<host>[0-9a-f]{8})-)?")
_LOCK_SUFFIX = ".taxcut-lock"
_SIDECAR_SUFFIX = ".taxcut"
_USE_RENAMEAT2 = True  # tests switch it off to exercise the fallbacks


def _host_tag() -> str:
    """This machine (and PID namespace), as 8 hex digits: staging of another tag cannot be checked by pid."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


_HOST = _host_tag()


# ---------------------------------------------------------------------------------------------------- staging

def _make_staging(shown: str, target: Path, *, folder: bool) -> Path:
    prefix = f".{target.name[:100]}.taxcut-partial-{os.getpid()}-{_HOST}-"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(target.parent)
        if folder:
            staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
            staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the published folder is ordinary
        else:
            handle, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
            os.close(handle)
            staging = Path(name)
            staging.chmod(0o666 & ~_umask())
    except OSError as exc:
        blocker = next((parent for parent in target.parents if parent.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise TaxcutError(f"{shown}: cannot write there ({blocker} is a file, not a folder); choose another "
                              "destination") from None
        raise TaxcutError(f"{shown}: cannot write there ({exc.strerror or exc}); choose another destination") from None
    return staging


def _umask() -> int:
    try:  # read without changing it: os.umask() would briefly change it for every thread
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _write_atomically(path: Path, text: str) -> None:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.taxcut-partial-{os.getpid()}-{_HOST}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(name, 0o666 & ~_umask())
        os.replace(name, path)
    except BaseException:
        _remove(Path(name))
        raise


# ---------------------------------------------------------------------------------------------------- publishing

@contextmanager
def _publish_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``target`` (flock on ``.NAME.taxcut-lock``, removed again when released).

    The kernel releases the lock of a killed process, so a lock is never stale; the file is unlinked while held
    and a waiter re-checks that the file it locked is still the one at the path.
    """
    path = target.parent / f".{target.name[:100]}{_LOCK_SUFFIX}"
    if fcntl is None:
        yield
        return
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without locks: rely on the no-replace rename alone
            os.close(handle)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            yield
            return
        held = os.fstat(handle)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(handle)  # released and unlinked by its holder while this run waited: lock the new one
    try:
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(handle)


_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


@functools.cache
def _libc_renameat2():
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """Linux ``renameat2``; False where the C library or the file system does not offer it."""
    function = _libc_renameat2() if _USE_RENAMEAT2 else None
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(target))


def _rename_noreplace(staging: Path, target: Path, *, folder: bool) -> None:
    """Rename, failing with FileExistsError if anything is at ``target`` (a plain rename would replace a file or
    an empty folder silently)."""
    if _renameat2(staging, target, _RENAME_NOREPLACE):
        return
    if not folder:
        try:
            os.link(staging, target)  # fails if the target exists
        except FileExistsError:
            raise
        except OSError:
            pass  # no hard links here: fall through to the check under the lock
        else:
            os.unlink(staging)
            return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "File exists", os.fspath(target))
    os.rename(staging, target)


def _exchange(staging: Path, target: Path, *, folder: bool) -> Path:
    """Put ``staging`` at ``target`` in one step; return where the replaced content now lies (to be removed)."""
    if _renameat2(staging, target, _RENAME_EXCHANGE):
        return staging
    if not folder:
        os.replace(staging, target)  # atomic for files
        return staging  # nothing left there
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name[:100]}.taxcut-old-{os.getpid()}-{_HOST}-",
                                    dir=target.parent))
    os.rename(target, retired / "content")
    os.rename(staging, target)
    return retired


def _remove(path: Path | None) -> None:
    if path is None or not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------------- sweeping

def sweep_stale_staging(parent: Path) -> list[Path]:
    """Remove what killed runs left in ``parent``; return what was removed.

    That is: staging folders and files whose process is gone (same machine: the pid in the name is not running,
    or is running but started after the staging was last touched, so it was reused) or, when made on another
    machine, untouched for :data:`STALE_AFTER_S`; lock files nobody holds; sidecars whose file is gone. Staging of
    a live run is never touched.
    """
    removed: list[Path] = []
    try:
        entries = sorted(os.scandir(parent), key=lambda entry: entry.name)
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        found = _STAGING.match(entry.name)
        if found and _abandoned(int(found["pid"]), found["host"], path):
            _remove(path)
            removed.append(path)
        elif not found and entry.name.endswith(_LOCK_SUFFIX) and _remove_free_lock(path):
            removed.append(path)
        elif not found and entry.name.startswith(".") and entry.name.endswith(_SIDECAR_SUFFIX) and _orphan(path):
            _remove(path)
            removed.append(path)
    return removed


def remove_leftovers(destination: Path) -> None:
    """Older name of :func:`sweep_stale_staging` on the destination's folder."""
    sweep_stale_staging(Path(destination).expanduser().resolve().parent)


def _abandoned(pid: int, host: str | None, path: Path) -> bool:
    try:
        touched = os.lstat(path).st_mtime
    except OSError:
        return False
    if host is not None and host != _HOST:
        return time.time() - touched > STALE_AFTER_S
    if pid == os.getpid():
        return False  # this process's own (another thread)
    return not _running_since(pid, touched)


def _running_since(pid: int, touched: float) -> bool:
    """Is ``pid`` a process that could have touched something at time ``touched``?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except (OverflowError, ValueError):
        return False
    started = _process_start(pid)
    return started is None or started <= touched + 2  # seconds of slack: boot time is read to the second


def _process_start(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), from /proc; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _remove_free_lock(path: Path) -> bool:
    if fcntl is None:
        return False
    try:
        handle = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held, current = os.fstat(handle), os.stat(path)
        if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(handle)


def _orphan(sidecar: Path) -> bool:
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("written_by") == "taxcut" and isinstance(record.get("file"), str)
            and not os.path.lexists(sidecar.parent / record["file"]))
