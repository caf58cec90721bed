"""One run at a time per repo directory: an exclusive lock on ``.NAME.lock`` next to the target.

Two converts to one ``--out`` would otherwise both check the target, both stage, and the later rename would
displace the earlier repo (or fail half way). The lock is taken before anything is checked or written and held
until the repo is in place; the run that does not get it fails at once, naming the target and the holder's pid.
It is an ``fcntl.flock`` lock, which the kernel drops when its process dies, so a lock left by a killed run is taken
over by the next one (the file still names the dead pid; it is rewritten). Where flock is missing (Windows) the
lock file is created with O_EXCL, and one whose pid is gone is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from .safety import process_gone

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ['TargetLockedError', 'lock_path', 'target_lock']


class TargetLockedError(RuntimeError):
    """Another run is writing the same repo directory."""


def lock_path(out_dir: Path) -> Path:
    """Next to the target (its parent always exists while staging), hidden, named after it."""
    return out_dir.parent / f'.{out_dir.name}.lock'


def _holder(text: str) -> tuple[int | None, str]:
    """The pid recorded in a lock file, and how to name the holder in a message."""
    try:
        info = json.loads(text)
        pid = int(info['pid'])
    except (ValueError, KeyError, TypeError):
        return None, 'pid unknown'
    host = info.get('host')
    return pid, f'pid {pid}' + (f' on {host}' if host and host != socket.gethostname() else '')


def _locked(out_dir: Path, path: Path, holder: str) -> TargetLockedError:
    return TargetLockedError(f"'{out_dir}' is being written by another hub_upload run ({holder}, lock '{path}'); "
                             'wait for it to finish or choose another output')


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode('utf-8', 'replace')


def _record(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({'tool': 'hub_upload', 'pid': os.getpid(), 'host': socket.gethostname()}).encode())


def _flock(out_dir: Path, path: Path, log: Callable[[str], None]) -> int:
    """Lock the file at ``path``; a file unlinked by its releasing holder between our open and flock is retried."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(_read(fd))[1]
            os.close(fd)
            raise _locked(out_dir, path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            break
        os.close(fd)  # we locked a file that is gone from the path: take the one there now
    pid = _holder(_read(fd))[0]
    if pid is not None and pid != os.getpid():
        log(f"took over the lock '{path}' of pid {pid}, which is no longer running")
    return fd


def _exclusive_file(out_dir: Path, path: Path, log: Callable[[str], None]) -> int:
    """The fallback without flock: O_EXCL creation; a lock file whose process is gone is removed once."""
    for _ in range(2):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid, holder = _holder(path.read_text(encoding='utf-8', errors='replace'))
            if pid is None or not process_gone(pid):
                raise _locked(out_dir, path, holder + '; remove the lock file if no such run is active') from None
            path.unlink(missing_ok=True)
            log(f"removed the lock '{path}' of pid {pid}, which is no longer running")
    raise _locked(out_dir, path, 'another run took it over just now')


def _missing_parents(directory: Path) -> list[Path]:
    """``directory`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    return missing


@contextlib.contextmanager
def target_lock(out_dir: str | os.PathLike, log: Callable[[str], None] = lambda message: None) -> Iterator[Path]:
    """Hold the lock on ``out_dir`` for the ``with`` block; raise `TargetLockedError` if another process holds it.

    The parent directories are created for the lock file; those that were created and stay empty (a run that failed
    before writing anything) are removed again, with the lock file.
    """
    out_dir = Path(out_dir)
    created = _missing_parents(out_dir.parent)
    path = lock_path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = _flock(out_dir, path, log) if fcntl is not None else _exclusive_file(out_dir, path, log)
        except OSError as e:  # a full disk, a read-only directory
            raise OSError(f"cannot create the lock '{path}': {e.strerror or e}; nothing was written") from e
        try:
            _record(fd)
            yield path
        finally:
            path.unlink(missing_ok=True)  # before unlocking: a waiting opener then finds the path gone and retries
            os.close(fd)
    finally:
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty
