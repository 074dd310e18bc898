"""Names of the temporary files that atomic writes go through, and the clean-up of those that
crashed writers left behind.

A write of ``folder/name`` goes to ``folder/.name.<host>-<pid>-<token>.part`` and is renamed onto
``name`` when complete. ``<host>`` is the first 8 hex digits of the SHA-1 of the writer's host
name, ``<pid>`` its process id and ``<token>`` 8 random hex digits. A process killed in the
middle of a write leaves its ``.part`` behind; :func:`remove_stale_temps`, called before each
write of the same target, deletes those whose writer is gone, so they do not pile up. A zarr
store is written the same way, as a temporary folder.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".part"
STALE_AFTER_S = 24 * 3600.0  # age after which a temp of unknown or foreign writer is stale
_START_MARGIN_S = 120.0  # a live PID whose process started this long after the temp's mtime
# what may stand between ".<name>." and ".part": our "<host>-<pid>-<token>", or the bare token
# of older versions (io: 8 hex digits; model files: tempfile's 8 characters of [a-z0-9_])
_MIDDLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OURS = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8}")


def host_tag() -> str:
    """8 hex digits naming this host (the SHA-1 of its host name)."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_path(target: str | os.PathLike) -> Path:
    """A fresh hidden temporary path beside ``target``: ``.<name>.<host>-<pid>-<token>.part``.
    Create it exclusively (``open(path, "xb")``): the token only makes a collision unlikely."""
    target = Path(target)
    return target.with_name(f".{target.name}.{host_tag()}-{os.getpid()}-"
                            f"{secrets.token_hex(4)}{SUFFIX}")


def _middle(name: str, target_name: str) -> str | None:
    """The part of ``name`` between ``.<target_name>.`` and ``.part``, if ``name`` is a
    temporary of ``target_name`` (of this scheme or an older one), else None."""
    prefix = f".{target_name}."
    if not (name.startswith(prefix) and name.endswith(SUFFIX)):
        return None
    middle = name[len(prefix):-len(SUFFIX)]
    return middle if _MIDDLE.fullmatch(middle) else None


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), on Linux; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()  # after the command name
        with open("/proc/stat", "rb") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith(b"btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (an unknown answer counts as alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


def _pid_alive_windows(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() != 87  # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _writer_gone(pid: int, modified: float) -> bool:
    """Whether the writer ``pid`` of this host, which last wrote its file at ``modified``, has
    exited. A live process that started well after that moment only reuses the number (the
    margin absorbs the second-wide precision of the boot time and clock adjustments)."""
    if not _pid_alive(pid):
        return True
    if pid == os.getpid():
        return False
    started = _process_start(pid)
    return started is not None and started > modified + _START_MARGIN_S


def remove_stale_temps(target: str | os.PathLike, *, max_age_s: float = STALE_AFTER_S,
                       ) -> list[Path]:
    """Delete the temporaries that crashed writers left beside ``target``; returns them.

    Only entries named ``.<target name>.<middle>.part`` are considered (``<middle>`` one run of
    letters, digits, ``_`` and ``-``), never through a symbolic link. A file named by this
    scheme on this host is deleted when its writer's process has exited; one of another host, or
    of an older scheme without a process id, only when it was not modified for ``max_age_s``
    (24 h). A folder (a zarr store being written) is deleted only by the first rule: its own
    modification time says nothing of the files inside. Anything else, and anything that cannot
    be examined or deleted, is left alone; it never raises.
    """
    target = Path(target)
    folder = target.parent
    removed: list[Path] = []
    here, now = host_tag(), time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        middle = _middle(entry.name, target.name)
        if middle is None:
            continue
        try:
            folder_entry = entry.is_dir(follow_symlinks=False)
            if not (folder_entry or entry.is_file(follow_symlinks=False)):
                continue
            modified = entry.stat(follow_symlinks=False).st_mtime
            ours = _OURS.fullmatch(middle)
            if ours and ours["host"] == here:
                stale = _writer_gone(int(ours["pid"]), modified)
            else:
                stale = not folder_entry and now - modified > max_age_s
            if not stale:
                continue
            if folder_entry:
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:  # another process removed it or committed it meanwhile
            continue
        except OSError as e:
            log.debug("Could not remove the stale temporary %s: %s", entry.path, e)
            continue
        log.info("Removed %s, left by an interrupted write.", entry.path)
        removed.append(Path(entry.path))
    return removed


def fresh_temp(path: Path) -> Path:
    """A fresh hidden temporary beside ``path`` (``.<name>.<host>-<pid>-<token>.part``), after
    deleting those that killed writers left there (see :func:`remove_stale_temps`)."""
    remove_stale_temps(path)
    return temp_path(path)


def sync_file(path: Path) -> None:
    """Flush the file ``path`` to disk (a full disk or a failing device raises here, not later)."""
    with open(path, "r+b") as fh:
        os.fsync(fh.fileno())


def sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable (POSIX; nothing elsewhere)."""
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit_temp(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk and move it onto ``path`` in one step."""
    sync_file(tmp)
    os.replace(tmp, path)
    sync_folder(path.parent)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap the entries ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system or the file system cannot, leaving both as
    they were."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # not supported here (e.g. NFS): the caller moves the entries one by one
    raise OSError(code, os.strerror(code), os.fspath(a))


@contextmanager
def atomic_temp(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` on success, else delete it."""
    tmp = fresh_temp(path)
    try:
        yield tmp
        commit_temp(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
