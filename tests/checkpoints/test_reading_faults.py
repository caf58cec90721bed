"""Garbage as a checkpoint: whatever a file holds, `read_checkpoint` answers with one line naming the file (a
ValueError), never another exception; the CLI commands that take a checkpoint print that line and exit 2."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from training_data import make_pose_data

from timm_hrnet.checkpoints import read_checkpoint
from timm_hrnet.tools.cli import main

TAILS = {
    'random': lambda rng: bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))),
    'zip': lambda rng: b'K\x03\x04' + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200))),
    'pickle': lambda rng: pickle.dumps({'state_dict': {'conv1.weight': [1, 2]}, 'x': rng.random()})[1:],
}


def garbage_files(folder: Path) -> list[Path]:
    """Every first byte, each followed by three kinds of tail: 768 files, named .pth (the loader tries them all)."""
    rng = random.Random(0)
    files = []
    for first in range(256):
        for kind, tail in TAILS.items():
            path = folder / f'{first:03d}_{kind}.pth'
            path.write_bytes(bytes([first]) + tail(rng))
            files.append(path)
    return files


def test_no_garbage_file_escapes_as_another_exception(tmp_path: Path) -> None:
    escaped = []
    for path in garbage_files(tmp_path):
        try:
            read_checkpoint(path)
        except ValueError as error:
            message = str(error)
            assert '\n' not in message and str(path) in message, message
        except Exception as error:  # noqa: BLE001 - the point of the test
            escaped.append(f'{path.name}: {type(error).__name__}: {error}')
        else:
            escaped.append(f'{path.name}: read as a checkpoint')
    assert not escaped, f'{len(escaped)} of 768 escaped:\n' + '\n'.join(escaped[:20])


@pytest.fixture
def text_checkpoint(tmp_path: Path) -> Path:
    """A text file named .pth: torch's legacy reader fails on it with `KeyError: 101`."""
    path = tmp_path / 'notes.pth'
    path.write_text('e' * 40 + '\nnot a checkpoint\n')
    return path


@pytest.mark.parametrize('command', ['pose', 'segment', 'evaluate-pose', 'evaluate-seg', 'export', 'train-pose',
                                     'train-pose --pretrained-file'])
def test_cli_commands_name_a_garbage_checkpoint_in_one_line(
        command: str, text_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / 'photo.png'
    Image.new('RGB', (64, 48)).save(image)
    (tmp_path / 'coco.json').write_text('{"images": [], "annotations": [], "categories": []}')
    annotations, images, keypoints = make_pose_data(tmp_path / 'data', count=2)
    train = ['train-pose', '--annotations', str(annotations), '--images', str(images), '--keypoints', str(keypoints),
             '--output', str(tmp_path / 'run'), '--workers', '0', '--no-progress']
    argv = {
        'pose': ['pose', str(image), '--checkpoint', str(text_checkpoint)],
        'segment': ['segment', str(image), '--checkpoint', str(text_checkpoint)],
        'evaluate-pose': ['evaluate-pose', '--checkpoint', str(text_checkpoint), '--annotations',
                          str(tmp_path / 'coco.json'), '--images', str(tmp_path), '--gt-boxes'],
        'evaluate-seg': ['evaluate-seg', '--checkpoint', str(text_checkpoint), '--images', str(tmp_path),
                         '--labels', str(tmp_path)],
        'export': ['export', '--pose', str(text_checkpoint), '--out', str(tmp_path / 'model.onnx')],
        'train-pose': [*train, '--init', str(text_checkpoint)],
        'train-pose --pretrained-file': [*train, '--init', 'hrnet_w18_small', '--pretrained-file',
                                         str(text_checkpoint)],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(text_checkpoint) in err and 'not a readable' in err, err
    assert 'KeyError: 101' not in err or 'not a readable PyTorch checkpoint' in err


def test_a_pickle_that_would_run_code_is_refused_naming_what_it_references(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ('pwned',))
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'payload': Evil()}, path)
    with pytest.raises(ValueError, match=r'refusing to load .*evil\.pth.*builtins\.print'):
        read_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (print, ('this would have run',))


@pytest.mark.parametrize('option', ['--checkpoint', '--pretrained-file'])
def test_a_pickle_that_would_run_code_is_one_line_from_every_option(
        option: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'payload': _RunsCode()}, evil)
    if option == '--checkpoint':
        image = tmp_path / 'photo.png'
        Image.new('RGB', (64, 48)).save(image)
        argv = ['pose', str(image), '--checkpoint', str(evil)]
    else:
        annotations, images, keypoints = make_pose_data(tmp_path / 'data', count=2)
        argv = ['train-pose', '--annotations', str(annotations), '--images', str(images), '--keypoints',
                str(keypoints), '--output', str(tmp_path / 'run'), '--init', 'hrnet_w18_small', '--pretrained-file',
                str(evil), '--workers', '0', '--no-progress']
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert 'this would have run' not in out + err
    assert len(err.strip().splitlines()) == 1 and f"refusing to load '{evil}'" in err and 'builtins.print' in err, err
