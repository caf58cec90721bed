"""The `timm-hrnet` command: predict, validate (also under a two-process torchrun), models, benchmark, user errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import torchrun
from PIL import Image
from timm.data import create_transform, resolve_data_config

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints with timm)
from timm_hrnet.checkpoints import files, reading
from timm_hrnet.tasks.classification_evaluation import read_samples
from timm_hrnet.tools.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES = 10
NUM_IMAGES = 7  # odd, so two ranks get 4 and 3 samples
IMG_SIZE = 64
SMALL = ['--model', 'hrnet_w18_small', '--img-size', str(IMG_SIZE), '--device', 'cpu']


pytestmark = pytest.mark.usefixtures('single_torch_thread')


@pytest.fixture(scope='module')
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model('hrnet_w18_small', num_classes=NUM_CLASSES).eval()


@pytest.fixture(scope='module')
def checkpoint(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fine-tuned-style checkpoint: plain state dict with a 10-class classifier."""
    path = tmp_path_factory.mktemp('checkpoint') / 'hrnet_w18_small_10cls.pth'
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope='module')
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp('flat')
    rng = np.random.default_rng(1)
    paths = []
    for i in range(NUM_IMAGES):
        path = folder / f'img{i}.png'
        Image.fromarray(rng.integers(0, 256, (56 + 4 * i, 72, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _manual_logits(model: torch.nn.Module, paths: list[Path]) -> torch.Tensor:
    """Logits computed with timm's own preprocessing at the test input size, independently of the CLI."""
    transform = create_transform(**resolve_data_config({'img_size': IMG_SIZE}, model=model))
    with torch.no_grad():
        return torch.cat([model(transform(Image.open(p).convert('RGB')).unsqueeze(0)) for p in paths])


@pytest.fixture(scope='module')
def split_file(model: torch.nn.Module, image_paths: list[Path]) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """Annotation file whose labels are chosen from the model's own ranking: every third image is a top-1 hit,
    every third a top-5-only hit (3rd-ranked class), the rest a miss (a class outside the top 5)."""
    logits = _manual_logits(model, image_paths)
    ranking = logits.argsort(dim=1, descending=True)
    labels = torch.stack([ranking[i, [0, 2, 7][i % 3]] for i in range(NUM_IMAGES)])
    path = image_paths[0].parent / 'val.txt'
    path.write_text(''.join(f'{p.name} {int(label)}\n' for p, label in zip(image_paths, labels, strict=True)))
    return path, logits, labels


def _run_validate(tmp_path: Path, data_dir: Path, split: Path | None, checkpoint: str, *extra: str) -> dict:
    results_file = tmp_path / 'results.json'
    args = ['validate', '--data-dir', str(data_dir), '--checkpoint', checkpoint, '--batch-size', '3', '--workers', '0',
            '--results-file', str(results_file), *SMALL, *extra]
    if split is not None:
        args += ['--split-file', str(split)]
    assert main(args) == 0
    return json.loads(results_file.read_text())


def test_predict_json_matches_inference_model(
    model: torch.nn.Module, checkpoint: str, image_paths: list[Path], capsys: pytest.CaptureFixture
) -> None:
    paths = [str(p) for p in image_paths[:3]]
    assert main(['predict', *paths, '--checkpoint', checkpoint, '--topk', '3', '--json', *SMALL]) == 0
    output = json.loads(capsys.readouterr().out)
    assert [entry['path'] for entry in output] == paths
    expected = _manual_logits(model, image_paths[:3]).softmax(-1)
    for entry, scores in zip(output, expected, strict=True):
        assert len(entry['topk']) == 3
        ranked = [item['score'] for item in entry['topk']]
        assert ranked == sorted(ranked, reverse=True)
        assert [item['label'] for item in entry['topk']] == scores.topk(3).indices.tolist()
        assert entry['pred_label'] == entry['topk'][0]['label'] == int(scores.argmax())
        assert entry['pred_score'] == pytest.approx(float(scores.max()), rel=1e-4)
        assert entry['pred_class'] == str(entry['pred_label'])  # a 10-class checkpoint carries no class names


def test_predict_text_reports_and_skips_unreadable_image(
    checkpoint: str, image_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / 'truncated.png'
    broken.write_bytes(image_paths[0].read_bytes()[:60])
    code = main(['predict', str(image_paths[0]), str(broken), '--checkpoint', checkpoint, '--topk', '2', *SMALL])
    captured = capsys.readouterr()
    assert code == 1
    assert str(broken) in captured.err
    lines = captured.out.splitlines()
    assert lines[0] == str(image_paths[0]) and len(lines) == 3
    assert lines[1].lstrip().startswith('1. ') and lines[2].lstrip().startswith('2. ')


def test_validate_split_file_equals_manual_computation(
    split_file: tuple[Path, torch.Tensor, torch.Tensor], checkpoint: str, tmp_path: Path
) -> None:
    path, logits, labels = split_file
    results = _run_validate(tmp_path, path.parent, path, checkpoint)
    top1 = 100 * (logits.argmax(1) == labels).double().mean().item()
    top5 = 100 * (logits.topk(5, dim=1).indices == labels[:, None]).any(1).double().mean().item()
    assert (top1, top5) == pytest.approx((100 * 3 / 7, 100 * 5 / 7))  # the labels were built to give these
    assert results['top1'] == pytest.approx(top1, abs=1e-9)
    assert results['top5'] == pytest.approx(top5, abs=1e-9)
    assert results['loss'] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    assert results['num_images'] == NUM_IMAGES and results['num_unreadable'] == 0
    assert results['input_size'] == [3, IMG_SIZE, IMG_SIZE]


def test_folder_layout_numbers_classes_like_imagefolder(image_paths: list[Path], tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    for class_name, members in [('zebra', image_paths[:2]), ('ant', image_paths[2:3]), ('mole', image_paths[3:5])]:
        (tmp_path / class_name).mkdir()
        for image in members:
            (tmp_path / class_name / image.name).write_bytes(image.read_bytes())
    (tmp_path / 'ant' / 'notes.txt').write_text('not an image, ignored like ImageFolder does')
    samples = read_samples(tmp_path)
    assert samples == ImageFolder(str(tmp_path)).samples
    assert {label for path, label in samples if '/ant/' in path} == {0}
    assert {label for path, label in samples if '/zebra/' in path} == {2}


def test_validate_counts_corrupt_images_and_strict_fails(
    checkpoint: str, image_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data_dir = tmp_path / 'data'
    for i, image in enumerate(image_paths[:4]):
        (data_dir / f'class{i % 2}').mkdir(parents=True, exist_ok=True)
        (data_dir / f'class{i % 2}' / image.name).write_bytes(image.read_bytes())
    corrupt = data_dir / 'class1' / 'corrupt.jpg'
    corrupt.write_bytes(b'garbage')
    results = _run_validate(tmp_path, data_dir, None, checkpoint)
    assert results['num_images'] == 4 and results['num_unreadable'] == 1
    assert results['unreadable'][0]['path'] == str(corrupt)
    assert str(corrupt) in capsys.readouterr().err
    strict_args = ['validate', '--data-dir', str(data_dir), '--checkpoint', checkpoint, '--workers', '0', '--strict',
                   *SMALL]
    assert main(strict_args) == 1
    assert '--strict' in capsys.readouterr().err


def test_torchrun_two_processes_equal_one_process(
    split_file: tuple[Path, torch.Tensor, torch.Tensor], checkpoint: str, tmp_path: Path
) -> None:
    path, _, _ = split_file
    corrupt_dir = tmp_path / 'data'
    corrupt_dir.mkdir()
    for line in path.read_text().splitlines():
        name = line.split()[0]
        (corrupt_dir / name).write_bytes((path.parent / name).read_bytes())
    (corrupt_dir / 'corrupt.png').write_bytes(b'garbage')
    split = corrupt_dir / 'val.txt'
    split.write_text(path.read_text() + 'corrupt.png 1\n')  # 8 entries, 7 readable: ranks get 4 + 3 readable images

    single = _run_validate(tmp_path, corrupt_dir, split, checkpoint)
    results_file = tmp_path / 'distributed.json'
    completed = torchrun('validate', '--data-dir', str(corrupt_dir), '--split-file', str(split),
                         '--checkpoint', checkpoint, '--batch-size', '3', '--workers', '0',
                         '--results-file', str(results_file), *SMALL)
    assert completed.returncode == 0, completed.stderr[-3000:]
    distributed = json.loads(results_file.read_text())
    assert distributed['world_size'] == 2 and single['world_size'] == 1
    for key in ('top1', 'top5', 'num_images', 'num_unreadable', 'unreadable'):
        assert distributed[key] == single[key], key
    assert distributed['num_images'] == NUM_IMAGES
    assert distributed['loss'] == pytest.approx(single['loss'], rel=1e-5)
    assert completed.stderr.count('skipped unreadable image') == 1, 'only rank 0 reports unreadable images'


@pytest.mark.parametrize('subcommand', ['validate', 'predict'])
def test_missing_checkpoint_is_one_line_exit_2(
    subcommand: str, split_file: tuple[Path, torch.Tensor, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = str(tmp_path / 'nope.pth')
    split = split_file[0]
    target = ['--data-dir', str(split.parent), '--split-file', str(split)] if subcommand == 'validate' else [
        str(split.parent / 'img0.png')]
    assert main([subcommand, *target, '--checkpoint', missing, *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'checkpoint not found' in err and missing in err


def test_missing_data_dir_is_one_line_exit_2(checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = str(tmp_path / 'no_such_dir')
    assert main(['validate', '--data-dir', missing, '--checkpoint', checkpoint, *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'data directory not found' in err and missing in err


def test_flat_folder_without_split_file_and_unknown_model_are_one_line(
    image_paths: list[Path], capsys: pytest.CaptureFixture
) -> None:
    assert main(['validate', '--data-dir', str(image_paths[0].parent), '--model', 'hrnet_w18_small']) == 2
    assert '--split-file' in capsys.readouterr().err
    assert main(['predict', str(image_paths[0]), '--model', 'hrnet_w18_smal']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'hrnet_w18_small' in err


def test_models_markdown_table(capsys: pytest.CaptureFixture) -> None:
    from timm_hrnet.pretrained_cfgs import published_results

    assert main(['models', 'hrnet_w18_small*', '--pretrained', '--markdown']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('| model |')
    rows = {cells[0]: cells[1:] for cells in (line.strip('|').split('|') for line in lines[2:])}
    rows = {name.strip(): [cell.strip() for cell in cells] for name, cells in rows.items()}
    assert set(rows) == set(timm.list_pretrained('hrnet_w18_small*'))
    params, gmacs, input_size, top1, top5 = rows['hrnet_w18_small.ms_in1k']
    with torch.device('meta'):
        n_params = sum(p.numel() for p in timm.create_model('hrnet_w18_small').parameters())
    assert params == f'{n_params / 1e6:.2f}'
    assert 1.5 < float(gmacs) < 1.7  # 1.6 GMACs at 224 is the widely published figure for HRNet-W18-small-v1
    assert input_size == '224'
    assert (float(top1), float(top5)) == pytest.approx(published_results('hrnet_w18_small.ms_in1k'), abs=0.005)


def test_benchmark_cpu_json(capsys: pytest.CaptureFixture) -> None:
    args = ['benchmark', '--model', 'hrnet_w18_small', '--batch-size', '1', '--img-size', '32', '--steps', '2',
            '--device', 'cpu', '--json']
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['input_size'] == [3, 32, 32] and result['images_per_second'] > 0
    assert result['peak_memory_kind'] == 'peak_rss_growth' and result['peak_memory_mib'] >= 0


def test_benchmark_fused(capsys: pytest.CaptureFixture) -> None:
    args = ['benchmark', '--model', 'hrnet_w18_small', '--batch-size', '1', '--img-size', '32', '--steps', '1',
            '--device', 'cpu', '--json', '--fused']
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)['fused'] is True


def test_predict_without_readable_images_fails_before_loading_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corrupt = tmp_path / 'corrupt.jpg'
    corrupt.write_bytes(b'not a jpeg')
    # an unknown model would fail too: reaching the image error proves the images are read first
    assert main(['predict', str(corrupt), str(tmp_path / 'missing.png'), '--model', 'hrnet_w19']) == 2
    err = capsys.readouterr().err
    assert 'corrupt.jpg' in err and 'missing.png' in err and 'none of the images could be read' in err


def test_demo_image_is_small_licensed_and_predictable(checkpoint: str, capsys: pytest.CaptureFixture) -> None:
    demo = REPO_ROOT / 'demo' / 'traffic_light.png'
    assert demo.stat().st_size < 50_000
    assert 'CC0' in (REPO_ROOT / 'demo' / 'LICENSE').read_text()
    assert main(['predict', str(demo), '--checkpoint', checkpoint, '--topk', '1', *SMALL]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(demo)


def counted(function: Callable, calls: list[str]) -> Callable:
    """`function`, noting its name in `calls` at each call."""
    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(function.__name__)
        return function(*args, **kwargs)
    return wrapper


def test_checkpoint_of_another_variant_gives_short_error(
    checkpoint: str, image_paths: list[Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for module, name in [(files, 'read_checkpoint_object'), (reading, 'read_checkpoint_object'),
                         (reading, 'detect_layout')]:
        monkeypatch.setattr(module, name, counted(getattr(module, name), calls))
    assert main(['predict', str(image_paths[0]), '--checkpoint', checkpoint, '--model', 'hrnet_w18_small_v2']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) < 500, err  # counts and a few names, not every key
    assert err[0].startswith(f'timm-hrnet predict: error: {checkpoint} does not fit hrnet_w18_small_v2: ')
    assert ' missing (' in err[0] and err[0].endswith('checkpoint: pass --model hrnet_w18_small')
    # read and worked out once: the load, the error and the search for the variant that fits share the value
    assert sorted(calls) == ['detect_layout', 'read_checkpoint_object']


def test_predict_local_dir_repo(
    model: torch.nn.Module, checkpoint: str, image_paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A `local-dir:` repo like hub_upload stages (model.safetensors + config.json) predicts as its checkpoint does."""
    repo = tmp_path / 'repo'
    timm.models.save_for_hf(model, repo, safe_serialization=True)
    paths = [str(p) for p in image_paths[:2]]
    common = [*paths, '--topk', '3', '--json', '--img-size', str(IMG_SIZE), '--device', 'cpu']
    assert main(['predict', *common, '--model', f'local-dir:{repo}']) == 0
    from_repo = json.loads(capsys.readouterr().out)
    assert main(['predict', *common, '--model', 'hrnet_w18_small', '--checkpoint', checkpoint]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    for mine, theirs in zip(from_repo, from_checkpoint, strict=True):
        assert [item['label'] for item in mine['topk']] == [item['label'] for item in theirs['topk']]
        assert mine['pred_score'] == pytest.approx(theirs['pred_score'], rel=1e-5)
    expected = _manual_logits(model, image_paths[:2]).argmax(1).tolist()
    assert [entry['pred_label'] for entry in from_repo] == expected


def test_predict_runs_on_the_resolved_device(
    checkpoint: str, image_paths: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Without --device the model goes to the default device (CUDA when available), not wherever it was built."""
    from timm_hrnet.classification import resolve_device
    from timm_hrnet.tools import cli

    devices = []

    def recording_inference_model(*args: object, **kwargs: object) -> object:
        devices.append(kwargs['device'])
        return inference_model(*args, **{**kwargs, 'device': 'cpu'})

    inference_model = cli.inference_model
    monkeypatch.setattr(cli, 'inference_model', recording_inference_model)
    assert main(['predict', str(image_paths[0]), '--checkpoint', checkpoint, '--model', 'hrnet_w18_small',
                 '--img-size', str(IMG_SIZE)]) == 0
    assert devices == [resolve_device(None)]


@pytest.mark.parametrize('args, problem', [
    (['benchmark', '--model', 'hrnet_w18_small', '--img-size', '16'], 'must be at least 32'),
    (['predict', 'x.png', '--img-size', '31'], 'must be at least 32'),
    (['validate', '--data-dir', '.', '--model', 'hrnet_w18_small', '--batch-size', '0'], 'must be at least 1'),
    (['benchmark', '--model', 'hrnet_w18_small', '--steps', 'two'], "expected an integer, got 'two'"),
])
def test_bad_numbers_fail_at_parse_time(args: list[str], problem: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert problem in err and 'Traceback' not in err


@pytest.mark.parametrize('subcommand', ['predict', 'benchmark', 'validate'])
def test_bogus_device_is_one_line_exit_2(
    subcommand: str, checkpoint: str, split_file: tuple[Path, torch.Tensor, torch.Tensor], capsys: pytest.CaptureFixture
) -> None:
    split = split_file[0]
    target = {
        'predict': [str(split.parent / 'img0.png'), '--checkpoint', checkpoint],
        'benchmark': [],
        'validate': ['--data-dir', str(split.parent), '--split-file', str(split), '--checkpoint', checkpoint],
    }[subcommand]
    assert main([subcommand, *target, '--model', 'hrnet_w18_small', '--device', 'bogus']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid --device 'bogus'" in err


def test_unreadable_images_listed_by_path_in_single_process(
    image_paths: list[Path], checkpoint: str, tmp_path: Path
) -> None:
    """Sorted by path as under torchrun, not in dataset order (here the split file lists them in reverse)."""
    for name in ('b_broken.png', 'a_broken.png'):
        (tmp_path / name).write_bytes(b'garbage')
    (tmp_path / image_paths[0].name).write_bytes(image_paths[0].read_bytes())
    split = tmp_path / 'val.txt'
    split.write_text(f'b_broken.png 0\na_broken.png 1\n{image_paths[0].name} 2\n')
    results = _run_validate(tmp_path, tmp_path, split, checkpoint)
    assert [item['path'] for item in results['unreadable']] == [str(tmp_path / 'a_broken.png'),
                                                                str(tmp_path / 'b_broken.png')]
    assert results['num_images'] == 1


def test_top_k_is_named_for_the_k_measured(image_paths: list[Path], tmp_path: Path, capsys) -> None:
    """A 2-class model cannot have a top-5: validate reports (and names) top-2."""
    two_class = tmp_path / 'two.pth'
    torch.save(timm.create_model('hrnet_w18_small', num_classes=2).state_dict(), two_class)
    for index, image in enumerate(image_paths[:2]):
        (tmp_path / 'data' / f'class{index}').mkdir(parents=True)
        (tmp_path / 'data' / f'class{index}' / image.name).write_bytes(image.read_bytes())
    results = _run_validate(tmp_path, tmp_path / 'data', None, str(two_class))
    assert results['topk'] == 2 and results['top2'] == 100.0 and 'top5' not in results
    output = capsys.readouterr().out
    assert 'top-2 100.000%' in output and 'top-5' not in output


@pytest.mark.parametrize('args, problem', [
    (['predict', 'x.png', '--crop-pct', '0'], 'must be in (0, 1], got 0'),
    (['validate', '--data-dir', '.', '--model', 'hrnet_w18_small', '--crop-pct', '1.5'], 'must be in (0, 1]'),
    (['predict', 'x.png', '--crop-pct', 'nan'], 'must be in (0, 1]'),
])
def test_crop_fraction_fails_at_parse_time(args: list[str], problem: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and problem in capsys.readouterr().err


def test_a_models_pattern_matching_nothing_is_an_error(capsys: pytest.CaptureFixture) -> None:
    assert main(['models', 'foo*']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no variant matches 'foo*'" in err[0] and 'hrnet_w18_small' in err[0]


@pytest.mark.parametrize('subcommand, default', [
    ('validate', 'images per batch (per process) (default: 64)'),
    ('predict', '(default: hrnet_w18.ms_in1k)'),
    ('benchmark', '(default: 20)'),
])
def test_help_shows_defaults(subcommand: str, default: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([subcommand, '--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert ' '.join(default.split()) in text and '(default: None)' not in text and '(default: False)' not in text


def test_hub_upload_help_shows_defaults(capsys: pytest.CaptureFixture) -> None:
    from hub_upload.__main__ import main as hub_main

    with pytest.raises(SystemExit):
        hub_main(['convert', '--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert '(default 1e-4)' in text and '(default: mit)' in text and '(default: auto)' in text
