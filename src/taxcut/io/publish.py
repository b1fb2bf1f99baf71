"""How taxcut puts a finished output in place: staging beside the destination, an exclusive rename, sweeping.

The machinery under :mod:`taxcut.io.destination`, which decides what may be written where, recognises what taxcut
wrote (markers, sidecars) and holds the entry points (``staged_folder``, ``staged_file``, ``claim_folder``). Nothing
here judges a destination:

- Staging: a hidden folder or file beside the destination (same file system), named
  ``.NAME.taxcut-partial-PID-HOST-...`` after the writing process and a tag of its machine, to be renamed into place
  when complete. Small files (markers, sidecars) are replaced atomically the same way. Every staging carries a
  mark taxcut wrote (:data:`_STAGING_MARK`: a file inside a staging folder, or ``STAGING.taxcut-staging`` beside a
  staged file, made before the file): the sweep removes only what has both the name and the mark, so a user's
  folder that merely looks like staging is never deleted.
- Exclusive renames: a new destination is put in place with Linux ``renameat2`` and ``RENAME_NOREPLACE`` (else a
  hard link for a file, else a check and a rename under the lock), so nothing that appeared meanwhile is replaced;
  a replaced one is swapped in with ``RENAME_EXCHANGE`` (else ``os.replace`` for a file, two renames for a folder)
  and what it replaced is removed afterwards.
- Locking: publishing holds an exclusive ``flock`` on ``.NAME.taxcut-lock`` beside the destination. The kernel
  releases the lock of a killed process, so a lock is never stale; where there are no locks, the no-replace rename
  alone decides. The lock file is opened with ``O_NOFOLLOW`` and must be a plain file: a link planted there is
  refused, never followed to create or lock a file elsewhere.
- Sweeping: making a staging first removes what killed runs left in that folder (:func:`sweep_stale_staging`):
  their staging once their process is gone (same machine) or after :data:`STALE_AFTER_S` (made on another machine),
  empty lock files nobody holds, and sidecars whose file is gone.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
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
_STAGING_MARK = ".taxcut-staging"  # inside a staging folder; beside a staged file, appended to its name
_USE_RENAMEAT2 = True  # tests switch it off to exercise the fallbacks


def _host_tag() -> str:
    """This machine (and PID namespace), as 8 hex digits: staging of another tag cannot be checked by pid."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


_HOST = _host_tag()


def quoted(path: str | bytes | os.PathLike) -> str:
    """A path for a one-line message: as it is, or ``repr``-quoted when it holds a newline or other control
    character, so one message stays one line and shows what is really there."""
    text = os.fsdecode(path)
    return text if text.isprintable() else repr(text)


# ---------------------------------------------------------------------------------------------------- staging


def _make_staging(shown: str, target: Path, *, folder: bool) -> Path:
    prefix = f".{target.name[:100]}.taxcut-partial-{os.getpid()}-{_HOST}-"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_staging(target.parent)
        if folder:
            staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
            _mark(staging / _STAGING_MARK, staging.name)
            staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the published folder is ordinary
        else:
            handle, staging = _new_staging_file(target.parent, prefix, target.suffix)
            os.close(handle)
            staging.chmod(0o666 & ~_umask())
    except OSError as exc:
        blocker = next((parent for parent in target.parents if parent.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise TaxcutError(
                f"{shown}: cannot write there ({quoted(blocker)} is a file, not a folder); choose another destination"
            ) from None
        raise TaxcutError(f"{shown}: cannot write there ({exc.strerror or exc}); choose another destination") from None
    return staging


def _new_staging_file(parent: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """Create an empty staging file (opened for writing) whose mark beside it exists first, so no staged file of
    taxcut's is ever unmarked; return its descriptor and path."""
    while True:
        staging = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            _mark(_beside_mark(staging), staging.name)
        except FileExistsError:
            continue
        try:
            return os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), staging
        except FileExistsError:
            _unlink(_beside_mark(staging))
        except BaseException:
            _unlink(_beside_mark(staging))
            raise


def _beside_mark(staging: Path) -> Path:
    return staging.with_name(f"{staging.name}{_STAGING_MARK}")


def _mark(path: Path, staging_name: str) -> None:
    """Write the mark that says taxcut made the staging ``staging_name`` (exclusively: never over anything)."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(json.dumps({"written_by": "taxcut", "staging": staging_name}) + "\n")


def _read_plain(path: Path, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a plain file taxcut wrote (a mark, marker or sidecar); None for anything else there.
    A link is not followed and a FIFO is not waited on: what taxcut reads of its own must not be planted."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return None
        with os.fdopen(os.dup(handle), "rb") as file:
            return file.read(limit)
    except OSError:
        return None
    finally:
        os.close(handle)


def _is_mark(path: Path, staging_name: str) -> bool:
    """Is ``path`` a plain file taxcut wrote to mark the staging ``staging_name``?"""
    try:
        record = json.loads(_read_plain(path, 4096) or b"null")
    except ValueError:
        return False
    return record == {"written_by": "taxcut", "staging": staging_name}


def _is_marked_staging(path: Path) -> bool:
    """Did taxcut make ``path`` as staging (a staging name, and its mark inside the folder or beside the file)?"""
    if _STAGING.match(path.name) is None or path.name.endswith(_STAGING_MARK):
        return False
    folder = path.is_dir() and not path.is_symlink()
    return _is_mark(path / _STAGING_MARK if folder else _beside_mark(path), path.name)


def _remark(folder: Path) -> None:
    """Mark a replaced folder now lying under a staging name (best effort: it was published, and stays so)."""
    try:
        _unlink(folder / _STAGING_MARK)  # a stray one from a run killed just after publishing names another staging
        _mark(folder / _STAGING_MARK, folder.name)
    except OSError:
        pass


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _discard(staging: Path) -> None:
    """Remove a staging and then its mark (the mark last: a run killed meanwhile leaves something still marked)."""
    _remove(staging)
    _unlink(_beside_mark(staging))


def _finish(staging: Path, target: Path, replaced: Path | None, *, folder: bool) -> None:
    """After publishing ``staging`` at ``target``: remove what it replaced, then the marks it no longer needs."""
    _remove(replaced)
    _unlink_quietly(target / _STAGING_MARK if folder else _beside_mark(staging))


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
    handle, staging = _new_staging_file(path.parent, f".{path.name[:100]}.taxcut-partial-{os.getpid()}-{_HOST}-", "")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, path)
    except BaseException:
        _discard(staging)
        raise
    _unlink(_beside_mark(staging))


# ---------------------------------------------------------------------------------------------------- publishing


@contextmanager
def _publish_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``target`` (flock on ``.NAME.taxcut-lock``, removed again when released).

    The kernel releases the lock of a killed process, so a lock is never stale; the file is unlinked while held
    and a waiter re-checks that the file it locked is still the one at the path. A link or anything but a plain
    file at the path is refused (``O_NOFOLLOW``): following it could create or lock a file elsewhere.
    """
    path = target.parent / f".{target.name[:100]}{_LOCK_SUFFIX}"
    if fcntl is None:
        yield
        return
    handle = _locked_handle(path, wait=True)
    if handle is None:  # a file system without locks: rely on the no-replace rename alone
        yield
        return
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
        if folder:  # the replaced folder now lies at the staging's name: mark it, so a kill here leaves it swept
            _remark(staging)
        return staging  # a replaced file keeps the staging's mark beside it
    if not folder:
        os.replace(staging, target)  # atomic for files
        return staging  # nothing left there
    retired = Path(
        tempfile.mkdtemp(prefix=f".{target.name[:100]}.taxcut-old-{os.getpid()}-{_HOST}-", dir=target.parent)
    )
    _mark(retired / _STAGING_MARK, retired.name)
    os.rename(target, retired / "content")
    os.rename(staging, target)
    return retired


def _remove(path: Path | None) -> None:
    """Remove a file or folder (a link itself, never what it points to); a staging folder's mark goes last."""
    if path is None or not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        try:
            children = sorted(Path(path).iterdir(), key=lambda child: child.name == _STAGING_MARK)
        except OSError:
            children = []
        for child in children:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                _unlink_quietly(child)
        shutil.rmtree(path, ignore_errors=True)
    else:
        _unlink_quietly(path)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------- sweeping


def sweep_stale_staging(parent: Path) -> list[Path]:
    """Remove what killed runs left in ``parent``; return what was removed.

    That is: staging folders and files whose process is gone (same machine: the pid in the name is not running,
    or is running but started after the staging was last touched, so it was reused) or, when made on another
    machine, untouched for :data:`STALE_AFTER_S`; lock files nobody holds; sidecars whose file is gone. Staging is
    recognised by its name *and* the mark taxcut wrote with it (a name alone could be a user's folder). Staging of
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
        if found and entry.name.endswith(_STAGING_MARK):  # a staged file's mark: removed once its staging is gone
            staging = entry.name[: -len(_STAGING_MARK)]
            if (
                not os.path.lexists(path.with_name(staging))
                and _is_mark(path, staging)
                and _abandoned(int(found["pid"]), found["host"], path)
            ):
                _unlink_quietly(path)
        elif found and _is_marked_staging(path) and _abandoned(int(found["pid"]), found["host"], path):
            _discard(path)
            removed.append(path)
        elif not found and entry.name.startswith(".") and entry.name.endswith(_LOCK_SUFFIX) and _remove_free_lock(path):
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
    """Remove a lock file nobody holds: a plain, empty file (taxcut never writes into one), not followed if a link."""
    if fcntl is None:
        return False
    try:
        handle = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        found = os.fstat(handle)
        if not stat.S_ISREG(found.st_mode) or found.st_size:
            return False
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
        record = json.loads(_read_plain(sidecar, 2**20) or b"null")
    except ValueError:
        return False
    return (
        isinstance(record, dict)
        and record.get("written_by") == "taxcut"
        and isinstance(record.get("file"), str)
        and not os.path.lexists(sidecar.parent / record["file"])
    )


# ---------------------------------------------------------------------------------------------------- holding


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is what it wrote there ("pid N on HOST"), None if not yet."""

    def __init__(self, holder: str | None):
        super().__init__(holder or "another process")
        self.holder = holder


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def probe_lock(path: Path) -> None:
    """Raise :class:`LockHeld` if another process holds the lock file ``path``; create and write nothing.

    A missing or free lock passes; a link or anything but a plain file there is refused, never followed.
    """
    if fcntl is None:
        return
    try:
        handle = _open_plain_lock(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: a read-only handle can take it everywhere
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LockHeld(_holder(handle)) from None
        if exc.errno not in _NO_LOCKS:
            raise
    finally:
        os.close(handle)


@contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block, or raise :class:`LockHeld` at once if another
    process holds it (never wait: a long job refuses a second one rather than queueing it).

    The file is created if missing; a link or anything but a plain file there is refused, never followed. While
    held it says which process holds it; it is unlinked when released, and the kernel releases the lock of a
    killed process. Where the file system has no locks the block runs unlocked, as :func:`_publish_lock` does.
    """
    if fcntl is None:
        yield
        return
    handle = _locked_handle(path, wait=False)
    if handle is None:
        yield
        return
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(handle)


def _locked_handle(path: Path, *, wait: bool) -> int | None:
    """An open handle on the plain lock file ``path`` holding its exclusive ``flock``; None where the file system
    has no locks. ``wait``: block until it is free; else raise :class:`LockHeld` at once, naming its holder. The
    lock taken is re-checked to be the file still at the path (its last holder unlinks it when done)."""
    while True:
        handle = _open_plain_lock(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            busy = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
            holder = _holder(handle) if busy else None
            os.close(handle)
            if busy:
                raise LockHeld(holder) from None
            if exc.errno not in _NO_LOCKS:
                raise
            return None
        held = os.fstat(handle)
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            return handle
        os.close(handle)  # unlinked by its holder between our open and our lock: lock the new one


def _open_plain_lock(path: Path, flags: int) -> int:
    """Open a lock file without following a link or blocking on a FIFO; refuse anything but a plain file."""
    refused = f"{quoted(path)}: is not taxcut's lock file (a link or not a plain file); remove it and run again"
    try:
        handle = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TaxcutError(refused) from None
        raise
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise TaxcutError(refused)
    return handle


def _holder(handle: int) -> str | None:
    """What the holder of a lock wrote in it, made safe to print (None if nothing yet)."""
    try:
        text = os.pread(handle, 200, 0).decode("utf-8", "replace")
    except OSError:
        return None
    text = "".join(c for c in text.strip() if c.isprintable())
    return text or None
