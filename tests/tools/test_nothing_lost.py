"""Nothing of the user's is lost through the command line: `--out` never replaces an input, outputs of one run never
share a name, a full disk leaves no half picture, a training folder holding a run is not started over silently, a
plain http URL needs --allow-http everywhere; each refusal is one line on stderr with exit code 2."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from task_reference import official_shapes, random_checkpoint, tiny_extra
from training_data import FAST, make_pose_data

from timm_hrnet.tools.cli import main

pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('checkpoints')
    paths = dict(pose=folder / 'pose_hrnet_tiny_64x48.pth', seg=folder / 'seg_tiny.pth')
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=False), 'pose', 17)), paths['pose'])
    torch.save(random_checkpoint(official_shapes(tiny_extra(seg=True), 'seg', 19)), paths['seg'])
    return paths


def photos(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize('command', ['segment', 'pose'])
def test_out_that_is_or_holds_an_input_is_refused_before_any_work(
        command: str, checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    [photo] = photos(tmp_path / 'photos', 'x.png')
    before = snapshot(tmp_path / 'photos')
    checkpoint = str(checkpoints['seg' if command == 'segment' else 'pose'])
    assert main([command, str(photo), '--checkpoint', checkpoint, '--out', str(photo)]) == 2
    assert 'is the input' in one_line_error(capsys)
    folder = tmp_path / 'photos'
    assert main([command, str(folder), '--checkpoint', checkpoint, '--out', str(folder)]) == 2
    assert 'holds the input' in one_line_error(capsys)
    assert snapshot(tmp_path / 'photos') == before


def test_outputs_of_one_run_never_share_a_name(checkpoints: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    photos(tmp_path / 'photos', 'x.jpg', 'x.png', 'y.png')
    out = tmp_path / 'drawn'
    assert main(['segment', str(tmp_path / 'photos'), '--checkpoint', str(checkpoints['seg']), '--out', str(out)]) == 2
    err = one_line_error(capsys)
    assert 'x.jpg' in err and 'x.png' in err and 'would both be drawn' in err
    assert not out.exists() or not any(out.iterdir())


def test_a_full_disk_leaves_no_half_picture_and_says_so(checkpoints: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    photos(tmp_path / 'photos', 'a.png', 'b.png')
    out = tmp_path / 'drawn'
    real_save = Image.Image.save

    def save_until_full(self: Image.Image, fp, *args, **kwargs) -> None:
        if Path(fp).name.startswith('.b.png.'):
            real_save(self, fp, *args, **kwargs)
            Path(fp).write_bytes(Path(fp).read_bytes()[:100])  # part of it reached the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(self, fp, *args, **kwargs)
    monkeypatch.setattr(Image.Image, 'save', save_until_full)
    assert main(['segment', str(tmp_path / 'photos'), '--checkpoint', str(checkpoints['seg']), '--out', str(out)]) == 2
    assert one_line_error(capsys).endswith(f'cannot write {out / "b.png"}: no space left on the device')
    assert sorted(p.name for p in out.iterdir()) == ['a.json', 'a.png']  # whole, and nothing else
    monkeypatch.undo()
    assert main(['segment', str(tmp_path / 'photos'), '--checkpoint', str(checkpoints['seg']), '--out', str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ['a.json', 'a.png', 'b.json', 'b.png']
    assert oct(os.stat(out / 'b.json').st_mode & 0o777) == oct(0o666 & ~_umask())
    json.loads((out / 'b.json').read_text())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_unwritable_out_is_one_line_before_the_model_runs(checkpoints: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    [photo] = photos(tmp_path, 'x.png')
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('')
    for out in (blocker / 'x.png', blocker / 'drawn'):
        source = photo if out.suffix else tmp_path
        assert main(['segment', str(source), '--checkpoint', str(checkpoints['seg']), '--out', str(out)]) == 2
        assert f'cannot write {blocker}' in one_line_error(capsys)
    assert main(['pose', str(photo), '--checkpoint', str(checkpoints['pose']), '--out', str(tmp_path / 'x.xyz')]) == 2
    assert "no image format for the suffix '.xyz'" in one_line_error(capsys)


def test_a_training_folder_holding_a_run_is_not_started_over(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    annotations, images, keypoints = make_pose_data(tmp_path / 'data', count=4)
    out = tmp_path / 'run'
    train = ['train-pose', '--annotations', str(annotations), '--images', str(images), '--keypoints', str(keypoints),
             '--output', str(out), '--init', FAST['init'], '--scratch', '--input-size', '64x48', '--batch-size', '2',
             '--workers', '0', '--no-progress', '--no-tensorboard', '--eval-every', '0']
    assert main([*train, '--max-steps', '2']) == 0
    capsys.readouterr()
    state = torch.load(out / 'last.pth', weights_only=True)
    log = (out / 'log.jsonl').read_text()
    assert main(train) == 2
    err = one_line_error(capsys)
    assert f'{out} holds a training run' in err and '--resume' in err and '--overwrite' in err and 'resume=' not in err
    assert (out / 'log.jsonl').read_text() == log
    assert torch.load(out / 'last.pth', weights_only=True)['step'] == state['step'] == 2
    assert main([*train, '--resume', '--overwrite']) == 2
    assert 'contradict' in one_line_error(capsys)
    assert main([*train, '--max-steps', '1', '--overwrite']) == 0
    records = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert records[-1]['step'] == 1 and not any(r.get('event') == 'resume' for r in records)
    assert torch.load(out / 'last.pth', weights_only=True)['step'] == 1


@pytest.mark.parametrize('option', ['--pose', '--seg', '--checkpoint'])
def test_export_takes_plain_http_only_with_allow_http(option: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    source = ['--model', 'hrnet_w18_small', '--checkpoint'] if option == '--checkpoint' else [option]
    assert main(['export', *source, 'http://127.0.0.1:9/model.pth', '--out', str(tmp_path / 'm.onnx')]) == 2
    err = one_line_error(capsys)
    assert 'refusing plain http:// download of http://127.0.0.1:9/model.pth' in err and '--allow-http' in err, err


def test_json_stdout_holds_only_the_json_and_long_work_shows_progress(
        checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A library printing to stdout while the model loads (torch.hub's download line) goes to stderr under --json;
    a multi-scale single image shows a bar over its passes on stderr."""
    import timm_hrnet.tools.task_cli as task_cli
    real = task_cli.create_seg_model

    def chatty(*args, **kwargs):
        print('Downloading: "https://example.invalid/weights.pth" to cache')
        return real(*args, **kwargs)
    monkeypatch.setattr(task_cli, 'create_seg_model', chatty)
    [photo] = photos(tmp_path, 'x.png')
    argv = ['segment', str(photo), '--checkpoint', str(checkpoints['seg']), '--scales', '0.75,1', '1.25']
    assert main([*argv, '--json']) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)['size'] == [48, 40] and 'Downloading' in err
    assert 'segment: 100%' in err and '3/3' in err
    assert main([*argv, '--json', '--no-progress']) == 0
    assert 'segment:' not in capsys.readouterr().err


def test_create_model_checkpoint_path_failures_name_the_file(tmp_path: Path) -> None:
    import timm
    garbage = tmp_path / 'notes.pth'
    garbage.write_text('eeee\nnot a checkpoint\n')
    with pytest.raises(ValueError, match=r"^'.*notes\.pth' is not a readable PyTorch checkpoint"):
        timm.create_model('hrnet_w18_small', checkpoint_path=str(garbage))
    other = tmp_path / 'v2.pth'
    torch.save(timm.create_model('hrnet_w18_small_v2').state_dict(), other)
    with pytest.raises(ValueError, match=r"^checkpoint_path '.*v2\.pth' does not load into hrnet_w18_small: "
                                         r'RuntimeError: Error\(s\) in loading state_dict') as raised:
        timm.create_model('hrnet_w18_small', checkpoint_path=str(other))
    assert '\n' not in str(raised.value)
    with pytest.raises(RuntimeError):  # other timm models: timm's own behaviour, untouched
        timm.create_model('resnet10t', checkpoint_path=str(other))


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(
        checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def export_until_full(model, args, path, *rest, **kwargs) -> None:
        Path(path).write_bytes(b'\x08' * 4096)  # part of the graph reached the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch.onnx, 'export', export_until_full)
    out = tmp_path / 'exports' / 'pose.onnx'
    out.parent.mkdir()
    assert main(['export', '--pose', str(checkpoints['pose']), '--out', str(out), '--no-check']) == 2
    assert one_line_error(capsys).endswith(f'cannot write {out}: no space left on the device')
    assert list(out.parent.iterdir()) == []


def test_a_full_disk_while_saving_the_training_state_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    annotations, images, keypoints = make_pose_data(tmp_path / 'data', count=2)
    out = tmp_path / 'run'
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs) -> None:
        if Path(f).name.startswith('.last.pth.'):
            Path(f).write_bytes(b'half')
            raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\n'
                               'PytorchStreamWriter failed writing file data/0: file write failed')
        real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', save_until_full)
    assert main(['train-pose', '--annotations', str(annotations), '--images', str(images), '--keypoints',
                 str(keypoints), '--output', str(out), '--init', FAST['init'], '--scratch', '--input-size', '64x48',
                 '--batch-size', '2', '--workers', '0', '--no-progress', '--no-tensorboard', '--eval-every', '0',
                 '--max-steps', '1']) == 2
    err = one_line_error(capsys)
    assert f'cannot write {out / "last.pth"}: RuntimeError: ' in err and 'file write failed' in err
    assert not [p for p in out.iterdir() if p.name.startswith('.last.pth')]


def test_a_bad_training_set_names_every_file_in_flag_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The library lists the bad samples over several lines; the command prints them all, not the first line."""
    annotations, images, keypoints = make_pose_data(tmp_path / 'data', count=3)
    (images / '001.png').unlink()
    assert main(['train-pose', '--annotations', str(annotations), '--images', str(images), '--keypoints',
                 str(keypoints), '--output', str(tmp_path / 'run'), '--init', FAST['init'], '--scratch',
                 '--workers', '0', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert '1 missing images' in err and str(images / '001.png') in err
    assert '--on-bad-sample skip' in err and 'on_bad_sample' not in err
    assert not (tmp_path / 'run').exists()
