"""`timm_hrnet.outputs`, the one output writer: whole or not at all, normal permissions, leftovers of killed writes
removed, one line naming the file when the disk is full or the folder read-only, never over an input."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timm_hrnet.outputs import (
    OutputError,
    atomic_path,
    check_not_an_input,
    check_writable,
    remove_stale_temporaries,
    temporary_folder,
    write_atomic,
    write_json,
)


def _full_disk_after(count: int):
    def write(temporary: Path) -> None:
        temporary.write_bytes(b'x' * count)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / 'result.json'
    write_json(target, {'old': 1})
    with pytest.raises(OutputError) as raised:
        write_atomic(target, _full_disk_after(4096))
    assert str(raised.value) == f'cannot write {target}: no space left on the device'
    assert target.read_text() == '{\n  "old": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['result.json']


def test_outputs_get_the_users_permissions(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = write_json(tmp_path / 'results.json', [1])
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


def test_the_temporary_keeps_the_suffix_so_writers_pick_the_format(tmp_path: Path) -> None:
    with atomic_path(tmp_path / 'picture.png') as temporary:
        assert temporary.suffix == '.png' and temporary.name.startswith('.picture.png.')
        temporary.write_bytes(b'png')
    assert (tmp_path / 'picture.png').read_bytes() == b'png'


def test_leftovers_of_a_killed_write_are_removed_by_the_next_write(tmp_path: Path) -> None:
    """A process killed mid-write leaves its hidden temporary (file or work folder); the next write to the same
    name removes it once that process is gone, and leaves a live process's temporary alone."""
    code = ('import os, sys; from pathlib import Path; from timm_hrnet.outputs import atomic_path, temporary_folder\n'
            f'with atomic_path(Path({str(tmp_path)!r}) / "last.pth") as t:\n'
            '    t.write_bytes(b"half"); os._exit(9)\n')
    subprocess.run([sys.executable, '-c', code], check=False, timeout=120)
    leftover = [p for p in tmp_path.iterdir() if p.name.startswith('.last.pth.')]
    assert len(leftover) == 1 and leftover[0].read_bytes() == b'half'
    in_folder = code.replace('atomic_path(Path', 'temporary_folder(Path').replace('t.write', '(t / "m").write')
    subprocess.run([sys.executable, '-c', in_folder], check=False, timeout=120)  # removes the first one's
    leftover = [p for p in tmp_path.iterdir() if p.name.startswith('.last.pth.')]
    assert len(leftover) == 1 and leftover[0].is_dir()
    live = tmp_path / f'.last.pth.{os.getppid()}.0123abcd.tmp.pth'  # a running process's (our parent's)
    live.write_bytes(b'in progress')
    write_atomic(tmp_path / 'last.pth', lambda t: t.write_bytes(b'whole'))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['last.pth', live.name])
    assert remove_stale_temporaries(tmp_path / 'last.pth') == []


def test_unwritable_targets_are_one_line_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    with pytest.raises(OutputError, match=r'cannot write .*a_file/out\.json: cannot make its folder'):
        check_writable(blocker / 'out.json')
    (tmp_path / 'folder.json').mkdir()
    with pytest.raises(OutputError, match=r'folder\.json: it is a folder'):
        check_writable(tmp_path / 'folder.json')
    check_writable(tmp_path / 'new' / 'out.json')
    assert list((tmp_path / 'new').iterdir()) == []
    with pytest.raises(OutputError, match='cannot write'), temporary_folder(tmp_path / 'model.onnx') as work:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(work))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.model.onnx.')]


def test_an_output_is_never_an_input(tmp_path: Path) -> None:
    photo = tmp_path / 'photos' / 'x.png'
    photo.parent.mkdir()
    photo.write_bytes(b'photo')
    with pytest.raises(OutputError, match=r'--out .*x\.png is the input .*x\.png'):
        check_not_an_input(photo, [photo])
    with pytest.raises(OutputError, match=r'--out .*photos holds the input'):
        check_not_an_input(tmp_path / 'photos', [photo], is_folder=True)
    with pytest.raises(OutputError, match='is the input'):  # the same file by another spelling
        check_not_an_input(tmp_path / 'photos' / '..' / 'photos' / 'x.png', [photo])
    check_not_an_input(tmp_path / 'out', [photo], is_folder=True)
    assert photo.read_bytes() == b'photo'
