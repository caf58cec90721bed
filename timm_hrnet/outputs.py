"""The one way timm_hrnet writes a user's file: whole or not at all, never over an input, with normal permissions.

`atomic_path(path)` gives a hidden temporary name in the target's folder (`.NAME.<pid>.<random>.tmp.SUFFIX`: same
folder, so the final `os.replace` is atomic; the suffix kept, so writers that pick the format from it still do) and
renames it onto `path` when the block completes; a failure removes the temporary and raises `OutputError`, one line
naming the file and the reason (full disk, read-only, permission). `write_atomic(path, write)` is that for one
writer call. A write killed before its rename leaves only the hidden file, which the next write to the same name
removes once the process that made it is gone; `temporary_folder(path)` does the same for a work folder (exports).
The writer creates the temporary itself, so the file gets the permissions every other file of the user gets (0666
less the umask), not `mkstemp`'s 0600.

`check_not_an_input(out, inputs)` refuses an output that is, or (for a folder) holds, one of the run's inputs,
before any work is done.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    'OutputError', 'atomic_path', 'check_not_an_input', 'check_writable', 'describe_os_error', 'process_gone',
    'remove_stale_temporaries', 'temporary_folder', 'write_atomic', 'write_json', 'write_text',
]

_REASONS = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EROFS: 'read-only file system',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'permission denied',
    errno.ENOTDIR: 'a part of the path is a file, not a folder',
    errno.EISDIR: 'it is a folder',
    errno.ENAMETOOLONG: 'the name is too long',
}
_TEMPORARY = re.compile(r'(\d+)\.[0-9a-f]{8}\.tmp(\.[^.]+)?')  # after '.NAME.'


class OutputError(OSError):
    """An output that cannot be written (or must not be): one line naming the file and the reason."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else 'cannot write the output'


def describe_os_error(error: BaseException) -> str:
    """The reason of a failed write in words a user acts on; the library's own message when it is not an OSError."""
    if isinstance(error, OSError) and error.errno in _REASONS:
        return _REASONS[error.errno]
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    text = ' '.join(str(error).split())
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def process_gone(pid: int) -> bool:
    """Whether no process has this id (POSIX); elsewhere nothing is presumed gone, so nothing is cleaned up."""
    if os.name != 'posix' or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries (files or work folders) of writes to `path` killed before their rename: those whose
    process is gone."""
    prefix = f'.{path.name}.'
    removed: list[Path] = []
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for candidate in candidates:
        match = _TEMPORARY.fullmatch(candidate.name[len(prefix):])
        if not match or not process_gone(int(match.group(1))):
            continue
        try:
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


def _temporary_name(path: Path) -> Path:
    return path.parent / f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}'


def _prepare(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f'cannot write {path}: cannot make its folder: {describe_os_error(error)}') from error
    if path.is_dir():
        raise OutputError(f'cannot write {path}: it is a folder')
    remove_stale_temporaries(path)


def _is_write_failure(error: BaseException) -> bool:
    """OSError, torch's RuntimeError from its stream writer, safetensors' own error type: a write that failed."""
    return isinstance(error, (OSError, RuntimeError)) or type(error).__name__ == 'SafetensorError'


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name for `path` in its folder, renamed onto `path` when the block completes, removed otherwise."""
    path = Path(path)
    _prepare(path)
    temporary = _temporary_name(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        if _is_write_failure(error) and not isinstance(error, OutputError):
            raise OutputError(f'cannot write {path}: {describe_os_error(error)}') from error
        raise


@contextmanager
def temporary_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden work folder next to `path` (same file system, so its files rename onto `path` atomically), removed
    when the block ends; a killed run's folder is removed by the next one for the same `path`."""
    path = Path(path)
    _prepare(path)
    folder = path.parent / f'.{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp'
    try:
        folder.mkdir()
    except OSError as error:
        raise OutputError(f'cannot write {path}: {describe_os_error(error)}') from error
    try:
        yield folder
    except OSError as error:
        if not isinstance(error, OutputError):
            raise OutputError(f'cannot write {path}: {describe_os_error(error)}') from error
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_writable(path: str | os.PathLike) -> None:
    """Raise `OutputError` now, before hours of work, when `path` could not be written (folder missing and not
    creatable, read-only, a folder in the way): a temporary is created there and removed."""
    path = Path(path)
    _prepare(path)
    temporary = _temporary_name(path)
    try:
        temporary.touch(exist_ok=False)
    except OSError as error:
        raise OutputError(f'cannot write {path}: {describe_os_error(error)}') from error
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(temporary)`, then rename the temporary onto `path` (see `atomic_path`); returns `path`."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`text` (UTF-8) written whole or not at all."""
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding='utf-8'))


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """`data` as JSON (with a final newline) written whole or not at all."""
    return write_text(path, json.dumps(data, indent=indent) + '\n')


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_not_an_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], flag: str = '--out',
                       is_folder: bool = False) -> None:
    """Raise `OutputError` when `out` is one of `inputs` or, for an output folder, the folder holding any of them.

    Checked before any work: a picture drawn over the photo it was drawn from is the user's photo lost.
    """
    out = Path(out)
    for source in map(Path, inputs):
        if _same(out, source) or out.resolve() == source.resolve():
            raise OutputError(f'{flag} {out} is the input {source}: it would be overwritten; choose another name')
        if is_folder and (source.resolve().parent == out.resolve() or _same(out, source.parent)):
            raise OutputError(f'{flag} {out} holds the input {source}: the outputs would be written among the '
                              'inputs; choose another folder')
