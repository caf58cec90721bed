"""Pose and segmentation training (`timm_hrnet.tasks.training`, `timm-hrnet train-pose` / `train-seg`) on tiny
synthetic data made here: coloured discs at known keypoint positions, coloured shapes as known class regions.

The proof that it learns: short CPU runs of hrnet_w18_small overfit their training set (COCO AP and mIoU measured
by the evaluation code); a killed and a stopped run resume to bit-identical weights; two torchrun processes train
what one process trains with the same global batch; bad data is refused or skipped, never turned into a wrong
target."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import openmmlab_fixture, relative_diff, torchrun
from PIL import Image
from training_data import FAST, POSE_INPUT, make_pose_data, make_seg_data

from timm_hrnet.checkpoints import CheckpointMismatchError
from timm_hrnet.tasks.datasets import keypoints_from_json
from timm_hrnet.tasks.pose import HRNetPose, create_pose_model
from timm_hrnet.tasks.pose_codecs import gaussian_heatmaps
from timm_hrnet.tasks.segmentation import HRNetSeg, create_seg_model
from timm_hrnet.tasks.training import (
    POSE_RECIPE,
    SEG_RECIPE,
    BadSampleError,
    PoseAugmentation,
    PoseTrainConfig,
    SegAugmentation,
    TrainConfig,
    load_pose_model,
    load_seg_model,
    read_keypoint_file,
    train_pose,
    train_seg,
)
from timm_hrnet.tasks.training.config import resolve_config
from timm_hrnet.tasks.training.losses import JointsMSELoss, SegCrossEntropy
from timm_hrnet.tasks.training.model_init import load_trunk
from timm_hrnet.tasks.training.pose_data import PersonSample, PoseTrainDataset, read_pose_annotations
from timm_hrnet.tasks.training.pose_geometry import to_crop
from timm_hrnet.tasks.training.pose_training import build_pose_model
from timm_hrnet.tasks.training.samples import EpochSampler
from timm_hrnet.tasks.training.seg_data import SegTrainDataset, scan_seg_folders
from timm_hrnet.tasks.training.seg_training import build_seg_model
from timm_hrnet.tasks.training.trainer import _scheduler
from timm_hrnet.tools.cli import main
from timm_hrnet.variants import resolve_variant

pytestmark = pytest.mark.usefixtures('single_torch_thread')

HAS_PYCOCOTOOLS = importlib.util.find_spec('pycocotools') is not None
needs_pycocotools = pytest.mark.skipif(not HAS_PYCOCOTOOLS, reason='could not import pycocotools (timm-hrnet[eval])')
HAS_TORCHRUN = torch.distributed.is_available() and importlib.util.find_spec('torch.distributed.run') is not None
needs_torchrun = pytest.mark.skipif(not HAS_TORCHRUN, reason='torchrun (torch.distributed.run) is not available')
HAS_TENSORBOARD = importlib.util.find_spec('tensorboard') is not None

def truncate(path: Path) -> None:
    """Cut an image file after its header: it opens, but cannot be decoded."""
    path.write_bytes(path.read_bytes()[:120])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def assert_same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key


def _log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / 'log.jsonl').read_text().splitlines()]


# -- it learns --------------------------------------------------------------------------------------------------------
@needs_pycocotools
def test_pose_training_overfits_with_the_official_augmentation(tmp_path: Path) -> None:
    """16 people, the full official augmentation (scale, rotation, flip, half body), 60 steps: train-set AP (COCO
    evaluation, flip test) >= 0.9; the exported files load through create_pose_model."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=16)
    result = train_pose(ann_file, images, keypoints=keypoints, val_ann_file=ann_file, val_image_dir=images,
                        output_dir=str(tmp_path / 'run'), input_size=POSE_INPUT, epochs=30, batch_size=8, lr=2e-3,
                        eval_every=30, log_every=5, **FAST)
    print(f'pose overfit: AP {result.metrics["AP"]:.3f} AP50 {result.metrics["AP50"]:.3f} '
          f'AP75 {result.metrics["AP75"]:.3f}, loss {result.losses[0]:.4g} -> {result.losses[-1]:.4g}')
    assert result.finished and result.step == 60 and result.skipped == 0
    assert result.metrics['AP'] >= 0.9
    assert np.mean(result.losses[-3:]) < 0.25 * np.mean(result.losses[:3])
    records = _log(result.output_dir)
    assert [r['event'] for r in records if 'event' in r] == ['start', 'eval', 'end']
    assert next(r for r in records if r.get('event') == 'eval')['AP'] == result.metrics['AP']

    loaded = load_pose_model(result.output_dir)
    assert loaded.keypoint_info.flip_pairs == ((1, 2), (3, 4)) and loaded.input_size == POSE_INPUT
    plain = create_pose_model(result.files['weights'], input_size=POSE_INPUT)
    crops = torch.rand(2, 3, *POSE_INPUT)
    with torch.no_grad():
        expected = result.model(crops)
        assert torch.equal(loaded(crops), expected) and torch.equal(plain(crops), expected)


def test_seg_training_overfits(tmp_path: Path) -> None:
    """8 images, random scale 0.8-1.2, 64x64 crops of 80x80 images, flip, SGD with poly decay, 80 steps: train-set
    mIoU (evaluate_seg on the whole images) >= 0.9; the exported files load through create_seg_model."""
    images, labels = make_seg_data(tmp_path / 'data')
    result = train_seg(images, labels, num_classes=3, val_image_dir=images, val_label_dir=labels,
                       output_dir=str(tmp_path / 'run'), crop_size=(64, 64),
                       augmentation=SegAugmentation(scale_range=(0.8, 1.2)), epochs=40, batch_size=4, lr=0.1,
                       eval_every=40, log_every=5, **FAST)
    print(f'seg overfit: mIoU {result.metrics["mIoU"]:.3f} aAcc {result.metrics["aAcc"]:.3f}, '
          f'loss {result.losses[0]:.4g} -> {result.losses[-1]:.4g}')
    assert result.finished and result.step == 80
    assert result.metrics['mIoU'] >= 0.9
    assert np.mean(result.losses[-3:]) < 0.25 * np.mean(result.losses[:3])

    loaded = load_seg_model(result.output_dir)
    plain = create_seg_model(result.files['weights'], align_corners=False)
    assert loaded.class_names == plain.class_names == ('class_0', 'class_1', 'class_2')
    batch = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = result.model(batch)
        assert torch.equal(loaded(batch), expected) and torch.equal(plain(batch), expected)


# -- exact resumption -------------------------------------------------------------------------------------------------
def _killed_after(samples: int):
    """A PoseTrainDataset.__getitem__ that dies (as a killed process would) at its `samples`-th call."""
    original = PoseTrainDataset.__getitem__
    calls = [0]

    def getitem(self: PoseTrainDataset, key: object) -> dict:
        calls[0] += 1
        if calls[0] > samples:
            raise KeyboardInterrupt('killed')
        return original(self, key)
    return getitem


def test_killed_and_stopped_pose_runs_resume_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """6 steps (3 epochs of 2) with augmentation, a step schedule and EMA: killed in step 4 (last checkpoint at
    step 3, mid-epoch) and resumed, or stopped at max_steps 5 and resumed (with a DataLoader worker this time), the
    exported weights and the whole training state equal the uninterrupted run's bit for bit."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=8)
    settings = dict(keypoints=keypoints, input_size=POSE_INPUT, epochs=3, batch_size=4, lr=1e-3, lr_steps=(2,),
                    ema_decay=0.9, checkpoint_every=3, **FAST)
    full = train_pose(ann_file, images, output_dir=str(tmp_path / 'full'), **settings)
    assert full.finished and full.step == 6

    killed = str(tmp_path / 'killed')
    with monkeypatch.context() as patch:
        patch.setattr(PoseTrainDataset, '__getitem__', _killed_after(14))  # step 4 reads samples 13-16
        with pytest.raises(KeyboardInterrupt):
            train_pose(ann_file, images, output_dir=killed, **settings)
    assert torch.load(Path(killed) / 'last.pth', weights_only=True)['step'] == 3
    assert not (Path(killed) / 'model.safetensors').exists()
    resumed = train_pose(ann_file, images, output_dir=killed, resume='auto', **settings)
    assert resumed.finished and resumed.step == 6

    stopped_dir = str(tmp_path / 'stopped')
    stopped = train_pose(ann_file, images, output_dir=stopped_dir, max_steps=5, **settings)
    assert not stopped.finished and stopped.step == 5 and stopped.files == {}
    with pytest.raises(ValueError, match='lr: 0.001 -> 0.002'):
        train_pose(ann_file, images, output_dir=stopped_dir, resume='auto', **{**settings, 'lr': 2e-3})
    continued = train_pose(ann_file, images, output_dir=stopped_dir, resume='auto', **{**settings, 'workers': 1})
    assert continued.finished and continued.step == 6

    reference = weights(Path(full.files['weights']))
    full_state = torch.load(full.state_file, weights_only=True)
    for run in (resumed, continued):
        assert_same_tensors(weights(Path(run.files['weights'])), reference)  # the EMA weights
        state = torch.load(run.state_file, weights_only=True)
        assert_same_tensors(state['model'], full_state['model'])
        for ours, theirs in zip(state['optimizer']['state'].values(), full_state['optimizer']['state'].values()):
            assert_same_tensors(ours, theirs)
        assert state['scheduler'] == full_state['scheduler']
    events = [r.get('event') for r in _log(Path(killed))]
    assert events.count('start') == 2 and 'resume' in events


def test_stopped_seg_run_resumes_bit_identical(tmp_path: Path) -> None:
    """The segmentation data path, SGD momentum, poly decay and OHEM, stopped mid-epoch and resumed."""
    images, labels = make_seg_data(tmp_path / 'data', count=4, size=(56, 56))
    settings = dict(num_classes=3, crop_size=(48, 48), epochs=2, batch_size=2, lr=0.01, ohem=True, **FAST)
    full = train_seg(images, labels, output_dir=str(tmp_path / 'full'), **settings)
    stopped = train_seg(images, labels, output_dir=str(tmp_path / 'stopped'), max_steps=1, **settings)
    assert not stopped.finished and stopped.step == 1
    resumed = train_seg(images, labels, output_dir=str(tmp_path / 'stopped'), resume='auto', **settings)
    assert full.step == resumed.step == 4
    assert_same_tensors(weights(Path(resumed.files['weights'])), weights(Path(full.files['weights'])))
    # fine-tuning an exported model: its class count and align_corners come from the files it wrote
    tuned = train_seg(images, labels, output_dir=str(tmp_path / 'tuned'),
                      **{**settings, 'num_classes': None, 'init': full.files['weights'], 'max_steps': 1})
    assert tuned.model.num_classes == 3 and tuned.model.align_corners is False


def test_gradient_checkpointing_trains_the_same_weights_and_bf16_runs(tmp_path: Path) -> None:
    """Recomputation changes memory, not results: full and selective checkpointing give the plain run's weights
    bit for bit; bf16 autocast with channels_last trains to a finite loss."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=4)
    settings = dict(keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2, **FAST)
    runs = {mode: train_pose(ann_file, images, output_dir=str(tmp_path / mode), grad_checkpointing=mode, **settings)
            for mode in ('none', 'full', 'selective')}
    plain = weights(Path(runs['none'].files['weights']))
    for mode in ('full', 'selective'):
        assert_same_tensors(weights(Path(runs[mode].files['weights'])), plain)
    bf16 = train_pose(ann_file, images, output_dir=str(tmp_path / 'bf16'), amp='bf16', channels_last=True,
                      **settings)
    assert bf16.finished and np.isfinite(bf16.losses).all()
    assert next(p for p in bf16.model.parameters()).dtype == torch.float32


def test_fp16_grad_scaler_state_is_saved_and_resumed(tmp_path: Path) -> None:
    """fp16 autocast with a GradScaler (float16 autocast runs on CPU too): stopped after one step and resumed, the
    run restores the scaler (its growth tracker counts both steps; a fresh scaler would count one) and trains the
    uninterrupted run's weights bit for bit."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=4)
    settings = dict(keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2, amp='fp16', **FAST)
    full = train_pose(ann_file, images, output_dir=str(tmp_path / 'full'), **settings)
    stopped = train_pose(ann_file, images, output_dir=str(tmp_path / 'stopped'), max_steps=1, **settings)
    saved = torch.load(stopped.state_file, weights_only=True)['scaler']
    assert saved['scale'] == 2.0 ** 16 and saved['_growth_tracker'] == 1  # an enabled scaler after one good step
    resumed = train_pose(ann_file, images, output_dir=str(tmp_path / 'stopped'), resume='auto', **settings)
    scaler = torch.load(resumed.state_file, weights_only=True)['scaler']
    assert scaler == torch.load(full.state_file, weights_only=True)['scaler'] and scaler['_growth_tracker'] == 2
    assert np.isfinite(full.losses).all()
    assert_same_tensors(weights(Path(resumed.files['weights'])), weights(Path(full.files['weights'])))


def test_compile_trains_what_eager_training_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`compile=True` runs the training steps through torch.compile of the training module: the same losses and
    weights as eager training within float tolerance, the exported weights under their plain keys. Inductor's C++
    code generation for HRNet's forward and backward takes about 3 minutes on 2 CPU cores, so torch.compile gets
    the aot_eager backend here: dynamo's trace and AOT autograd's joint graph of the step run, inductor does not."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip('torch.compile (dynamo) is not supported on this Python / torch build')
    compiled_modules = []
    original = torch.compile

    def compile_aot_eager(module: torch.nn.Module, **options: object) -> torch.nn.Module:
        compiled_modules.append(module)
        return original(module, **{**options, 'backend': 'aot_eager'})
    monkeypatch.setattr(torch, 'compile', compile_aot_eager)
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=4)
    settings = dict(keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2, log_every=1, **FAST)
    eager = train_pose(ann_file, images, output_dir=str(tmp_path / 'eager'), **settings)
    assert not compiled_modules
    compiled = train_pose(ann_file, images, output_dir=str(tmp_path / 'compiled'), compile=True, **settings)
    assert len(compiled_modules) == 1 and compiled.finished and compiled.step == 2
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-4)
    ours, theirs = weights(Path(compiled.files['weights'])), weights(Path(eager.files['weights']))
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.skipif(not HAS_TENSORBOARD, reason='could not import tensorboard (optional: pip install tensorboard)')
def test_tensorboard_scalars_mirror_the_log(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=4)
    result = train_pose(ann_file, images, keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2,
                        log_every=1, output_dir=str(tmp_path / 'run'), **{**FAST, 'tensorboard': True})
    events = EventAccumulator(str(result.output_dir / 'tensorboard'))
    events.Reload()
    losses = events.Scalars('train/loss')
    assert [e.step for e in losses] == [1, 2]
    assert [e.value for e in losses] == pytest.approx(result.losses)
    assert [e.step for e in events.Scalars('train/lr')] == [1, 2]


def test_tensorboard_asked_for_without_the_package_says_what_to_install(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # as if tensorboard were not installed
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=2)
    with pytest.raises(ImportError, match='needs the tensorboard package.*pip install tensorboard'):
        train_pose(ann_file, images, keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2,
                   output_dir=str(tmp_path / 'run'), **{**FAST, 'tensorboard': True})


# -- torchrun ---------------------------------------------------------------------------------------------------------
@needs_torchrun
def test_torchrun_two_processes_train_what_one_process_trains(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m timm_hrnet train-pose` on CPU (gloo), 2 samples per process, against one
    process with 4: the same samples per global batch (DistributedSampler sharding), DDP's gradient average, hence
    the same weights within float tolerance. BatchNorm is frozen: per-process batch statistics differ by design,
    and SyncBatchNorm runs on CUDA only."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=8)
    ddp_dir = tmp_path / 'ddp'
    process = torchrun('train-pose', '--annotations', str(ann_file), '--images', str(images),
                       '--keypoints', str(keypoints), '--init', 'hrnet_w18_small', '--scratch', '--input-size', '64x48',
                       '--epochs', '2', '--batch-size', '2', '--optimizer', 'momentum', '--lr', '0.01', '--freeze-bn',
                       '--workers', '0', '--device', 'cpu', '--no-progress', '--no-tensorboard', '--log-every', '1',
                       '--output', str(ddp_dir), '--json')
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads(process.stdout)
    assert summary['finished'] and summary['step'] == 4

    single = train_pose(ann_file, images, keypoints=keypoints, input_size=POSE_INPUT, epochs=2, batch_size=4,
                        optimizer='momentum', lr=0.01, freeze_bn=True, log_every=1,
                        output_dir=str(tmp_path / 'single'), **FAST)
    start = next(r for r in _log(ddp_dir) if r.get('event') == 'start')
    assert start['world_size'] == 2 and start['global_batch'] == 4
    ddp_losses = [r['loss'] for r in _log(ddp_dir) if 'loss' in r]
    np.testing.assert_allclose(ddp_losses, single.losses, rtol=1e-5)
    ddp_weights = weights(ddp_dir / 'model.safetensors')
    for key, value in weights(Path(single.files['weights'])).items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-4, atol=1e-6, msg=key)


@needs_torchrun
def test_torchrun_two_processes_train_the_segmentation_model_one_process_trains(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m timm_hrnet train-seg` (gloo), 2 crops per process, against one process
    with 4: the same weights within float tolerance. Crops inside the images (no padding, no ignored pixels) give
    every process as many labelled pixels, so the mean of the per-process losses DDP averages is the one-process
    loss; BatchNorm is frozen as in the pose test."""
    images, labels = make_seg_data(tmp_path / 'data', count=4, size=(40, 40))
    ddp_dir = tmp_path / 'ddp'
    process = torchrun('train-seg', '--images', str(images), '--labels', str(labels), '--num-classes', '3',
                       '--init', 'hrnet_w18_small', '--scratch', '--crop-size', '32x32', '--no-augment',
                       '--epochs', '2', '--batch-size', '2', '--lr', '0.01', '--freeze-bn', '--workers', '0',
                       '--device', 'cpu', '--no-progress', '--no-tensorboard', '--log-every', '1',
                       '--output', str(ddp_dir), '--json')
    assert process.returncode == 0, process.stderr[-3000:]
    assert json.loads(process.stdout)['step'] == 2

    single = train_seg(images, labels, num_classes=3, crop_size=(32, 32), augmentation=SegAugmentation.none(),
                       epochs=2, batch_size=4, lr=0.01, freeze_bn=True, log_every=1,
                       output_dir=str(tmp_path / 'single'), **FAST)
    start = next(r for r in _log(ddp_dir) if r.get('event') == 'start')
    assert start['world_size'] == 2 and start['global_batch'] == 4
    np.testing.assert_allclose([r['loss'] for r in _log(ddp_dir) if 'loss' in r], single.losses, rtol=1e-5)
    ddp_weights = weights(ddp_dir / 'model.safetensors')
    for key, value in weights(Path(single.files['weights'])).items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-4, atol=1e-6, msg=key)


# -- bad data ---------------------------------------------------------------------------------------------------------
def _with_bad_annotations(ann_file: Path) -> None:
    data = json.loads(ann_file.read_text())
    annotations = data['annotations']
    annotations[0]['keypoints'][0] = -5.0  # head outside the image
    annotations[1]['bbox'][2] = 0.0  # zero-area box
    data['images'][2]['file_name'] = 'missing.png'
    ann_file.write_text(json.dumps(data))


def test_bad_pose_annotations_are_refused_or_skipped(tmp_path: Path) -> None:
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=4)
    _with_bad_annotations(ann_file)
    with pytest.raises(BadSampleError) as error:
        read_pose_annotations(ann_file, images)
    for text in ('1 joints outside their image', '1 zero-area boxes', '1 missing images', 'missing.png',
                 'head at [-5.0', 'on_bad_sample="skip"'):
        assert text in str(error.value)
    with pytest.raises(BadSampleError, match='zero-area'):
        train_pose(ann_file, images, keypoints=keypoints, output_dir=str(tmp_path / 'run'), **FAST)

    scanned = read_pose_annotations(ann_file, images, on_bad_sample='skip')
    assert scanned.skipped == {'joints outside their image': 1, 'zero-area boxes': 1, 'missing images': 1}
    assert [s.annotation_id for s in scanned.samples] == [1, 4]
    assert scanned.samples[0].labelled.tolist() == [False, True, True, True, True]
    dataset = PoseTrainDataset(scanned.samples, read_keypoint_file(keypoints), POSE_INPUT, (0.5,) * 3, (0.25,) * 3,
                               PoseAugmentation.none())
    item = dataset[0]
    assert item['target_weight'][:, 0].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]  # the joint outside weighs nothing
    assert item['target'][0].abs().sum() == 0 and item['target'][1].max() == 1


def _sample_at(count: int, position: int, seed: int = 0) -> int:
    """The sample index at `position` of epoch 0's order (`EpochSampler`, one process)."""
    sampler = EpochSampler(list(range(count)), 1, 0, seed)
    sampler.start(0)
    return [index for _, index in sampler][position]


def test_corrupt_image_mid_epoch_saves_the_state_and_resumes(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """A corrupt image in the epoch's third batch (read by a DataLoader worker): the run stops with one line naming
    the file and saying how to go on, after saving the state of step 2; resumed with skip it trains the weights a
    run that skipped from the start trains."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=6)
    bad = images / f'{_sample_at(6, 4):03d}.png'  # in step 3 of 3
    truncate(bad)
    run = tmp_path / 'run'
    code = main(['train-pose', '--annotations', str(ann_file), '--images', str(images), '--keypoints', str(keypoints),
                 '--init', 'hrnet_w18_small', '--scratch', '--input-size', '64x48', '--epochs', '1', '--batch-size',
                 '2', '--workers', '1', '--device', 'cpu', '--no-progress', '--no-tensorboard', '--output', str(run)])
    error = capsys.readouterr().err
    assert code == 2 and error.count('\n') == 1 and 'Traceback' not in error, error
    for text in (f'cannot read image {bad}', 'stopped before step 3 of 3', f'state of step 2 saved in {run}',
                 'rerun with --resume', '--resume --on-bad-sample skip'):
        assert text in error, text
    assert torch.load(run / 'last.pth', weights_only=True)['step'] == 2 and not (run / 'model.safetensors').exists()

    settings = dict(keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2, on_bad_sample='skip',
                    **FAST)
    resumed = train_pose(ann_file, images, output_dir=str(run), resume='auto', **settings)
    assert resumed.finished and resumed.step == 3 and resumed.skipped == 1
    skipping = train_pose(ann_file, images, output_dir=str(tmp_path / 'skip'), **settings)
    assert skipping.skipped == 1 and _log(skipping.output_dir)[-2]['skipped_samples'] == 1
    assert_same_tensors(weights(Path(resumed.files['weights'])), weights(Path(skipping.files['weights'])))

    dataset = PoseTrainDataset(read_pose_annotations(ann_file, images).samples, read_keypoint_file(keypoints),
                               POSE_INPUT, (0.5,) * 3, (0.25,) * 3, on_bad_sample='skip')
    empty = dataset[int(bad.stem)]
    assert empty['valid'] == 0 and empty['target_weight'].sum() == 0 and empty['target'].sum() == 0


def test_resume_refuses_other_training_data(tmp_path: Path) -> None:
    """The state stores the sample count and a hash of the sample list: a moved joint or a removed annotation
    (pose), a removed image (segmentation) make resuming an error rather than other batches at the saved step."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'pose', count=4)
    settings = dict(keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2, **FAST)
    run = str(tmp_path / 'pose_run')
    train_pose(ann_file, images, output_dir=run, max_steps=1, **settings)
    data = json.loads(ann_file.read_text())
    data['annotations'][1]['keypoints'][0] += 1.0  # as many samples, another target
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r'last.pth was trained on other data: 4 samples \(sample list sha256 '
                                         r'[0-9a-f]{12}\), now 4 \([0-9a-f]{12}\)'):
        train_pose(ann_file, images, output_dir=run, resume='auto', **settings)
    del data['annotations'][3]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r'4 samples .* now 3 '):
        train_pose(ann_file, images, output_dir=run, resume='auto', **settings)

    seg_images, labels = make_seg_data(tmp_path / 'seg', count=4, size=(40, 40))
    seg_settings = dict(num_classes=3, crop_size=(32, 32), epochs=1, batch_size=2, **FAST)
    seg_run = str(tmp_path / 'seg_run')
    train_seg(seg_images, labels, output_dir=seg_run, max_steps=1, **seg_settings)
    shutil.copyfile(seg_images / '003.png', seg_images / '004.png')  # a new image, and its label map
    shutil.copyfile(labels / '003.png', labels / '004.png')
    with pytest.raises(ValueError, match=r'trained on other data: 4 samples .* now 5 '):
        train_seg(seg_images, labels, output_dir=seg_run, resume='auto', **seg_settings)


def test_bad_label_maps_are_refused_or_skipped(tmp_path: Path) -> None:
    images, labels = make_seg_data(tmp_path / 'data', count=3, size=(40, 40))
    values = np.asarray(Image.open(labels / '001.png')).copy()
    values[:3, :3] = 7  # beyond the 3 classes
    values[-3:, -3:] = 255  # ignored: fine
    Image.fromarray(values, mode='L').save(labels / '001.png')
    with pytest.raises(BadSampleError, match=r'001.png has values 7 outside the 3 classes'):
        scan_seg_folders(images, labels, num_classes=3, check_values=True)
    samples, skipped = scan_seg_folders(images, labels, num_classes=3, check_values=True, on_bad_sample='skip')
    assert len(samples) == 2 and skipped == {'bad label maps': 1}

    samples, _ = scan_seg_folders(images, labels, num_classes=3)  # values unchecked until a sample is loaded
    strict = SegTrainDataset(samples, 3, (32, 32), (0.5,) * 3, (0.25,) * 3, SegAugmentation.none())
    with pytest.raises(BadSampleError, match='001.png has values 7'):
        strict[1]
    lenient = SegTrainDataset(samples, 3, (32, 32), (0.5,) * 3, (0.25,) * 3, on_bad_sample='skip')
    empty = lenient[1]
    assert empty['valid'] == 0 and bool((empty['label'] == 255).all())
    with pytest.raises(BadSampleError, match='001.png has values 7'):
        train_seg(images, labels, num_classes=3, crop_size=(32, 32), batch_size=3, epochs=1,
                  output_dir=str(tmp_path / 'run'), **FAST)

    truncate(images / '002.png')
    assert lenient[2]['valid'] == 0
    with pytest.raises(BadSampleError, match='002.png'):
        strict[2]
    Image.new('L', (20, 40)).save(labels / '000.png')
    with pytest.raises(BadSampleError, match='size mismatches'):
        scan_seg_folders(images, labels, num_classes=3)


def test_images_without_label_maps_are_refused_or_skipped(tmp_path: Path) -> None:
    images, labels = make_seg_data(tmp_path / 'data', count=3, size=(40, 40))
    (labels / '001.png').unlink()
    with pytest.raises(BadSampleError) as error:
        scan_seg_folders(images, labels, num_classes=3)
    assert '1 images without a label map' in str(error.value) and f'no label map for {images / "001.png"}' in str(
        error.value) and 'on_bad_sample="skip"' in str(error.value)
    samples, skipped = scan_seg_folders(images, labels, num_classes=3, on_bad_sample='skip')
    assert [s.image.name for s in samples] == ['000.png', '002.png'] and skipped == {'images without a label map': 1}
    result = train_seg(images, labels, num_classes=3, crop_size=(32, 32), epochs=1, batch_size=2,
                       on_bad_sample='skip', output_dir=str(tmp_path / 'run'), **FAST)
    assert result.finished and result.step == 1
    start = next(r for r in _log(result.output_dir) if r.get('event') == 'start')
    assert start['data']['samples'] == 2 and start['data']['skipped'] == {'images without a label map': 1}


# -- the pieces -------------------------------------------------------------------------------------------------------
def test_heatmap_targets() -> None:
    joints = np.array([[10.2, 6.7], [40.0, 40.0], [-30.0, 5.0], [-5.0, 5.0]])
    target, weight = gaussian_heatmaps(joints, np.array([1, 0, 1, 1]), (16, 12), 4, sigma=2.0)
    assert target.shape == (4, 16, 12) and weight[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert np.unravel_index(target[0].argmax(), target[0].shape) == (2, 3) and target[0, 2, 3] == 1.0
    assert target[0, 2, 5] == pytest.approx(np.exp(-4 / 8))
    assert target[1].sum() == 0 and target[2].sum() == 0  # unlabelled; wholly outside
    assert target[3].sum() > 0 and target[3, :, 0].max() < 1  # partly outside: the official partial Gaussian


def test_joints_mse_ignores_zero_weight_joints() -> None:
    target = torch.rand(2, 3, 4, 4)
    heatmaps = target.clone()
    heatmaps[:, 1] += 5  # a wrong joint whose weight is 0
    weight = torch.tensor([[1.0], [0.0], [1.0]]).expand(2, 3, 1)
    assert JointsMSELoss()(heatmaps, target, weight) == 0
    assert JointsMSELoss()(heatmaps, target, torch.ones(2, 3, 1)) == pytest.approx(0.5 * 25 / 3)


def test_flip_swaps_left_and_right_and_mirrors_the_crop(tmp_path: Path) -> None:
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=1)
    kept = PoseTrainDataset(read_pose_annotations(ann_file, images).samples, read_keypoint_file(keypoints),
                            POSE_INPUT, (0.0,) * 3, (1.0,) * 3, PoseAugmentation.none())
    flipped = PoseTrainDataset(kept.samples, kept.keypoints, POSE_INPUT, (0.0,) * 3, (1.0,) * 3,
                               dataclasses.replace(PoseAugmentation.none(), flip_prob=1.0))
    sample = kept.samples[0]
    matrix, _ = kept.geometry(sample, 0, 0)
    u, v = to_crop(sample.joints, matrix).T
    expected = np.stack([POSE_INPUT[1] - u, v], axis=1)[[0, 2, 1, 4, 3]]  # mirrored, pairs swapped
    target, _ = gaussian_heatmaps(expected, np.ones(5), (16, 12), 4)
    item = flipped[0]
    assert torch.equal(item['target'], torch.from_numpy(target))
    # the mirrored crop is the kept one mirrored, one column over (the official whole-image flip)
    torch.testing.assert_close(item['image'][..., 1:], kept[0]['image'].flip(-1)[..., :-1], atol=1e-5, rtol=0)


def test_half_body_crops_the_upper_or_lower_joints(tmp_path: Path) -> None:
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=4)
    half = dataclasses.replace(PoseAugmentation.none(), half_body_prob=1.0, half_body_min_joints=2)
    dataset = PoseTrainDataset(read_pose_annotations(ann_file, images).samples, read_keypoint_file(keypoints),
                               POSE_INPUT, (0.0,) * 3, (1.0,) * 3, half)
    halves = set()
    for index, sample in enumerate(dataset.samples):
        matrix, _ = dataset.geometry(sample, 0, index)
        centre = matrix @ np.array([POSE_INPUT[1] / 2, POSE_INPUT[0] / 2, 1.0])
        upper, lower = sample.joints[:3].mean(axis=0), sample.joints[3:].mean(axis=0)
        halves.add('upper' if np.allclose(centre, upper) else 'lower' if np.allclose(centre, lower) else 'neither')
    assert halves == {'upper'}  # the lower half (two feet) has too few joints: the official rule takes the upper


def test_half_body_takes_the_upper_body_as_often_as_the_official_code() -> None:
    """The official half_body_transform takes the upper body when np.random.randn() < 0.5, in 69 % of the half-body
    crops (not half of them); our draw is a standard normal of the sample's own generator."""
    keypoints = keypoints_from_json(dict(name='six', keypoints=['a', 'b', 'c', 'd', 'e', 'f'], upper_body=[0, 1, 2]))
    joints = np.array([[10.0, 10.0], [20.0, 12.0], [15.0, 20.0], [12.0, 50.0], [18.0, 60.0], [25.0, 55.0]])
    sample = PersonSample(Path('unread.png'), (40, 80), (5.0, 5.0, 25.0, 60.0), joints, np.ones(6, dtype=bool))
    half = dataclasses.replace(PoseAugmentation.none(), half_body_prob=1.0)
    draws = 2000
    dataset = PoseTrainDataset([sample] * draws, keypoints, POSE_INPUT, (0.0,) * 3, (1.0,) * 3, half)
    centre = np.array([POSE_INPUT[1] / 2, POSE_INPUT[0] / 2, 1.0])
    centres = [dataset.geometry(sample, 0, index)[0] @ centre for index in range(draws)]
    upper = sum(np.allclose(c, joints[:3].mean(axis=0)) for c in centres)
    lower = sum(np.allclose(c, joints[3:].mean(axis=0)) for c in centres)
    assert upper + lower == draws
    assert abs(upper / draws - 0.6915) < 0.025  # P(N(0, 1) < 0.5)


def test_ohem_keeps_only_the_hard_pixels() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0] = torch.tensor([[10.0, 10.0], [0.0, -10.0]])  # class 0 sure, sure, unsure, wrong
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    labels[0, 1, 1] = 255
    pixel = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction='none')
    assert SegCrossEntropy(ohem=True, threshold=0.7, min_kept=0)(logits, labels) == pytest.approx(pixel[0, 1, 0])
    assert SegCrossEntropy()(logits, labels) == pytest.approx(pixel[0][labels[0] != 255].mean())


def test_official_schedules_scale_to_the_epochs() -> None:
    assert resolve_config(PoseTrainConfig(), POSE_RECIPE).lr_steps == (170, 200)
    config = resolve_config(PoseTrainConfig(epochs=21), POSE_RECIPE)
    assert (config.optimizer, config.lr, config.lr_steps, config.lr_factor) == ('adam', 1e-3, (17, 20), 0.1)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = _scheduler(optimizer, config, steps_per_epoch=10)
    lrs = []
    for step in (0, 169, 170, 199, 200, 209):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]['lr'])
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])

    seg = resolve_config(TrainConfig(), SEG_RECIPE)
    assert (seg.optimizer, seg.lr, seg.weight_decay, seg.schedule, seg.epochs) == ('momentum', 0.01, 5e-4, 'poly',
                                                                                    484)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=seg.lr)
    scheduler = _scheduler(optimizer, dataclasses.replace(seg, epochs=1), steps_per_epoch=100)
    scheduler.step_update(50)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(0.01 * 0.5 ** 0.9)


def test_models_start_from_an_imagenet_trunk_or_a_task_checkpoint(weights_file: Path, tmp_path: Path) -> None:
    """The classifier's tensors in every trunk key, the head freshly initialised; a released pose / segmentation
    checkpoint with another joint / class count loads all but a re-initialised head."""
    classifier = safetensors.torch.load_file(str(weights_file))
    keypoints = read_keypoint_file(make_pose_data(tmp_path / 'data', count=1)[2])
    pose = build_pose_model('hrnet_w18_small', keypoints, POSE_INPUT, pretrained_file=weights_file)
    seg = build_seg_model('hrnet_w18_small', 3, pretrained_file=weights_file)
    for model, head in ((pose, 'final_layer.'), (seg, 'last_layer.')):
        trunk = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
        assert trunk and all(torch.equal(v, classifier[k]) for k, v in trunk.items())
        assert 0 < model.output_conv().weight.std() < 0.002
    assert seg.align_corners is False and seg.training
    # the classifier's own head is left over; a trunk of another network is refused naming each key
    own = pose.state_dict()
    assert load_trunk(pose, classifier, 'final_layer.', 'classifier') == sorted(
        k for k in classifier if k not in own or k.startswith('final_layer.'))
    other = {k: v for k, v in classifier.items() if k != 'conv1.weight'}
    other['bn1.weight'] = torch.ones(3)
    with pytest.raises(CheckpointMismatchError, match='variant of the model being trained') as refused:
        load_trunk(pose, other, 'final_layer.', 'other')
    assert refused.value.missing == ['conv1.weight'] and list(refused.value.mismatched) == ['bn1.weight']
    assert refused.value.mismatched['bn1.weight'] == ((3,), tuple(classifier['bn1.weight'].shape))

    released = HRNetPose(dataclasses.replace(resolve_variant('hrnet_w18_small'), multi_scale_output=False), 17)
    torch.save(released.state_dict(), tmp_path / 'pose_hrnet_w18_small_256x192.pth')
    tuned = build_pose_model(tmp_path / 'pose_hrnet_w18_small_256x192.pth', keypoints, POSE_INPUT)
    assert tuned.num_joints == 5 and tuned.input_size == POSE_INPUT and tuned.keypoint_info == keypoints
    own = tuned.state_dict()
    assert all(torch.equal(own[k], v) for k, v in released.state_dict().items() if not k.startswith('final_layer.'))
    assert tuned.final_layer.weight.shape[0] == 5 and 0 < tuned.final_layer.weight.std() < 0.002

    spec = dataclasses.replace(resolve_variant('hrnet_w18_small'), upsample='bilinear')
    released_seg = HRNetSeg(spec, 19)
    safetensors.torch.save_file(released_seg.state_dict(), str(tmp_path / 'seg.safetensors'))
    tuned_seg = build_seg_model(tmp_path / 'seg.safetensors', 3)
    assert tuned_seg.num_classes == 3 and tuned_seg.align_corners is False  # the Cityscapes model's
    assert torch.equal(tuned_seg.last_layer[0].weight, released_seg.last_layer[0].weight)


def _alone(weights: str, folder: Path) -> Path:
    """A copy of an exported weights file without the config.json beside it."""
    folder.mkdir()
    return Path(shutil.copy(weights, folder))


def test_a_model_fine_tuned_from_mmseg_loads_back_with_its_resizes(tmp_path: Path) -> None:
    """mmseg's exchange units resize in two steps (`HRNetSpec.upsample_by_stride`), which the exported canonical
    keys do not show: config.json records it, and load_seg_model / create_seg_model on the output give the trained
    model's logits bit for bit at a size no multiple of 32, where the weights alone give others."""
    images, labels = make_seg_data(tmp_path / 'data', count=2, size=(40, 40))
    init = openmmlab_fixture('mmseg_fcn_hr_reduced.pth')
    trained = train_seg(images, labels, crop_size=(32, 32), epochs=1, batch_size=2, lr=1e-4,
                        output_dir=str(tmp_path / 'run'), **dict(FAST, init=init))
    assert all(torch.isfinite(p).all() for p in trained.model.state_dict().values())
    config = json.loads(Path(trained.files['config']).read_text())
    assert config['architecture']['upsample_by_stride'] is True and config['align_corners'] is False
    x = torch.randn(1, 3, 70, 100)
    with torch.no_grad():
        expected = trained.model(x)
        for model in (load_seg_model(trained.output_dir), create_seg_model(trained.files['weights'])):
            assert model.spec.upsample_by_stride and torch.equal(model(x), expected)
        alone = create_seg_model(_alone(trained.files['weights'], tmp_path / 'alone'), align_corners=False)
        assert relative_diff(alone(x), expected) > 1e-4  # so the loads above could have failed


def test_a_model_fine_tuned_from_mmpose_keeps_its_decoding(tmp_path: Path) -> None:
    """mmpose's heatmap decoding rule is not in the weights either: config.json records it, and load_pose_model /
    create_pose_model on the output predict what the trained model predicts; the weights alone decode by the
    official rule."""
    ann_file, images, keypoints = make_pose_data(tmp_path / 'data', count=2)
    trained = train_pose(ann_file, images, keypoints=keypoints, input_size=POSE_INPUT, epochs=1, batch_size=2,
                         output_dir=str(tmp_path / 'run'),
                         **dict(FAST, init=openmmlab_fixture('mmpose_td-hm_hrnet_reduced.pth')))
    assert trained.model.codec.spec == 'mmpose'
    assert json.loads(Path(trained.files['config']).read_text())['codec'] == 'mmpose'
    image = sorted(images.iterdir())[0]
    expected = trained.model.predict(image)
    for model in (load_pose_model(trained.output_dir), create_pose_model(trained.files['weights'])):
        assert model.codec.spec == 'mmpose'
        result = model.predict(image)
        assert torch.equal(result['keypoints'], expected['keypoints']) and torch.equal(result['scores'],
                                                                                       expected['scores'])
    assert create_pose_model(_alone(trained.files['weights'], tmp_path / 'alone')).codec.spec == 'official'


def test_custom_keypoint_sets(tmp_path: Path) -> None:
    path = tmp_path / 'hand.yaml'
    path.write_text('keypoints: [wrist, thumb_L, thumb_R, tip]\nflip_pairs: [[thumb_L, thumb_R]]\n'
                    'sigmas: [0.1, 0.1, 0.1, 0.1]\nskeleton: [[0, 1], [0, 2], [0, 3]]\n')
    hand = read_keypoint_file(path)
    assert hand.name == 'hand' and hand.flip_pairs == ((1, 2),) and hand.num_joints == 4
    assert read_keypoint_file(_write(tmp_path / 'auto.json', dict(keypoints=['Left_a', 'b', 'Right_a']))
                              ).flip_pairs == ((0, 2),)  # pairs from the names by default
    with pytest.raises(ValueError, match=r'joint indices must be in \[0, 2\)'):
        read_keypoint_file(_write(tmp_path / 'bad.json', dict(keypoints=['a', 'b'], flip_pairs=[[0, 5]])))
    ann_file, images, _ = make_pose_data(tmp_path / 'data', count=1)
    with pytest.raises(ValueError, match="'hand' has 4 joints, the annotation file 5"):
        train_pose(ann_file, images, keypoints=path, output_dir=str(tmp_path / 'run'), **FAST)


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = ['--output', str(tmp_path / 'run')]
    assert main(['train-pose', '--annotations', str(tmp_path / 'none.json'), '--images', str(tmp_path), *output]) == 2
    error = capsys.readouterr().err
    assert error.startswith('timm-hrnet train-pose: error: cannot read annotation file') and error.count('\n') == 1
    images, labels = make_seg_data(tmp_path / 'data', count=1)
    assert main(['train-seg', '--images', str(images), '--labels', str(labels), '--init', 'hrnet_w18_small',
                 '--scratch', *output]) == 2
    assert 'how many classes?' in capsys.readouterr().err


def test_a_log_line_cut_by_a_kill_is_dropped_on_resume(tmp_path: Path) -> None:
    from timm_hrnet.tasks.training.run_log import RunLog
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    log.write(dict(step=1, loss=0.5))
    log.close()
    with open(tmp_path / 'log.jsonl', 'a') as file:
        file.write('{"step": 2, "lo')  # the kill came mid-append
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    log.write(dict(step=2, loss=0.4))
    log.close()
    assert [json.loads(line)['step'] for line in (tmp_path / 'log.jsonl').read_text().splitlines()] == [1, 2]
