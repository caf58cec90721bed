"""Touch only what hub_upload made: the staged-repo marker, guarded atomic replacement, recovery.

A repo directory hub_upload stages carries ``.hub_upload.json``, listing the files it wrote with their sha256.
``--force`` replaces a directory only when that marker is there and the directory still holds exactly those files,
unchanged; never the source checkpoint or a directory holding it. The replacement renames the old directory aside,
moves the new one in and deletes the old one last; if anything fails in between, the old directory is moved back.
A run killed in that window (or before its staging directory was moved into place) leaves hidden
``.NAME.<pid>.<random>.replaced`` / ``.staging`` directories next to the repo, which the next run on that repo puts
back or removes once their process is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from timm_hrnet.download import file_sha256
from timm_hrnet.outputs import process_gone

__all__ = [
    'MARKER_NAME',
    'UnsafeTargetError',
    'check_target',
    'is_staged_repo',
    'make_staging_dir',
    'process_gone',
    'recover_interrupted',
    'replace_dir',
    'write_marker',
]

MARKER_NAME = '.hub_upload.json'
_LEFTOVER = re.compile(r'(\d+)\.[a-z0-9_]{8}\.(staging|replaced)')  # after '.NAME.': mkdtemp's 8 random characters


class UnsafeTargetError(ValueError):
    """A destination hub_upload will not write to: it did not make it, or it holds the source."""


def write_marker(directory: Path, info: dict[str, Any]) -> None:
    """Record every file of ``directory`` with its sha256, so that a later --force can tell it is unchanged."""
    files = {p.name: file_sha256(p) for p in sorted(directory.iterdir()) if p.name != MARKER_NAME}
    (directory / MARKER_NAME).write_text(json.dumps({'tool': 'hub_upload', **info, 'files': files}, indent=2) + '\n')


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((directory / MARKER_NAME).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get('files'), dict) else None


def is_staged_repo(directory: Path) -> bool:
    """Whether ``directory`` carries hub_upload's marker (its contents are checked by ``check_target``)."""
    return directory.is_dir() and not directory.is_symlink() and _read_marker(directory) is not None


def _holds(directory: Path, path: Path) -> bool:
    directory, path = directory.resolve(), path.resolve()
    return path == directory or directory in path.parents


def check_target(out_dir: Path, force: bool, sources: Iterable[Path] = ()) -> None:
    """Raise unless ``out_dir`` may be (re)written: absent, or, with ``force``, an unchanged hub_upload repo.

    Never the source checkpoint (``sources``) or a directory holding it, whatever ``force`` says.
    """
    for source in sources:
        if _holds(out_dir, source):
            what = 'is' if out_dir.resolve() == source.resolve() else 'holds'
            raise UnsafeTargetError(f"'{out_dir}' {what} the source checkpoint '{source}'; choose another output")
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not force:
        raise FileExistsError(f"'{out_dir}' already exists; to replace a repo hub_upload staged there, pass --force "
                              '(batch: --restage)')
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise UnsafeTargetError(f"'{out_dir}' is not a directory hub_upload staged; refusing to replace it")
    marker = _read_marker(out_dir)
    if marker is None:
        raise UnsafeTargetError(f"'{out_dir}' was not staged by hub_upload (no {MARKER_NAME}); refusing to replace "
                                'it: remove it yourself or choose another output')
    present = {p.name for p in out_dir.iterdir()} - {MARKER_NAME}
    foreign = sorted(present - set(marker['files']))
    if foreign:
        raise UnsafeTargetError(f"'{out_dir}' holds files hub_upload did not write ({', '.join(foreign[:5])}); "
                                'refusing to replace it')
    changed = sorted(name for name in present if file_sha256(out_dir / name) != marker['files'][name])
    if changed:
        raise UnsafeTargetError(f"'{out_dir}' has files changed since hub_upload wrote them ({', '.join(changed)}); "
                                'refusing to replace it')


def make_staging_dir(out_dir: Path) -> Path:
    """A hidden directory next to ``out_dir`` (same filesystem, so the final rename is atomic), named after this PID."""
    return Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.{os.getpid()}.', suffix='.staging', dir=out_dir.parent))


def _rename(source: Path, destination: Path) -> None:
    """os.rename, in one place so that fault tests can interrupt a replacement between its steps."""
    os.rename(source, destination)


def replace_dir(staging: Path, out_dir: Path) -> None:
    """Move ``staging`` to ``out_dir``; an existing ``out_dir`` (checked by the caller) comes back if that fails."""
    if not out_dir.exists():
        _rename(staging, out_dir)
        return
    holding = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.{os.getpid()}.', suffix='.replaced', dir=out_dir.parent))
    displaced = holding / out_dir.name
    _rename(out_dir, displaced)
    try:
        _rename(staging, out_dir)
    except BaseException:
        _rename(displaced, out_dir)
        holding.rmdir()
        raise
    shutil.rmtree(holding, ignore_errors=True)  # what remains is removed by the next run's recover_interrupted


def recover_interrupted(out_dir: Path, log: Callable[[str], None]) -> None:
    """Undo what a killed run left next to ``out_dir``: restore a displaced repo, remove stale staging directories."""
    parent, prefix = out_dir.parent, f'.{out_dir.name}.'
    if not parent.is_dir():
        return
    for leftover in sorted(parent.iterdir()):
        match = _LEFTOVER.fullmatch(leftover.name[len(prefix):]) if leftover.name.startswith(prefix) else None
        if match is None or not leftover.is_dir() or not process_gone(int(match.group(1))):
            continue
        displaced = leftover / out_dir.name
        if match.group(2) == 'replaced' and displaced.is_dir() and not out_dir.exists():
            _rename(displaced, out_dir)
            leftover.rmdir()
            log(f"restored '{out_dir}' from an interrupted replacement")
        else:
            shutil.rmtree(leftover)
            log(f"removed '{leftover}' left by an interrupted run")
