"""Pose and segmentation repos: the official pose_hrnet / seg_hrnet checkpoints as float32 safetensors with the
official keys, a config.json that rebuilds the model through timm_hrnet (these are not timm classifiers) and a card.

Verification is self-consistency only: the official task code is not installable here, so the repo rebuilt from its
model.safetensors and config.json is compared with timm_hrnet's own model of the source checkpoint (timm_hrnet's task
models are themselves tested against outputs of the official code, docs/tasks.md). Reports and cards say so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from timm_hrnet.convert import MMPRETRAIN, CheckpointMismatchError, detect_layout
from timm_hrnet.download import FetchedFile, resolve_checkpoint
from timm_hrnet.pose import HRNetPose, _input_size_from_name, create_pose_model
from timm_hrnet.segmentation import HRNetSeg, create_seg_model
from timm_hrnet.task_checkpoints import (
    CLASSIFICATION,
    POSE,
    SEGMENTATION,
    TaskCheckpoint,
    checkpoint_task,
    read_architecture,
    read_task_checkpoint,
)
from timm_hrnet.task_data import KEYPOINT_SETS, SEG_DATASETS, seg_dataset_for

from .model_card import Complexity, TaskFacts, build_task_model_card
from .names import TASK_ARCHITECTURES, TASK_METRICS
from .push import read_weights_metadata
from .safety import check_target, recover_interrupted
from .stage import StageResult, VerificationError, _stderr, _version, _write, stage_repo, weights_metadata
from .verify import WEIGHTS_NAME

__all__ = ['TaskVerifyReport', 'convert_task_to_dir', 'detect_task', 'task_repo_config', 'verify_task_dir']

SEG_MACS_SIZE = (512, 1024)  # segmentation GMACs on the card: the Cityscapes training crop, as tables usually quote
SEG_VERIFY_SIZE = (256, 256)  # default verification input of segmentation repos (any size works)
_CODE = {POSE: 'pose_hrnet', SEGMENTATION: 'seg_hrnet'}
_CREATE = {POSE: 'create_pose_model', SEGMENTATION: 'create_seg_model'}


def detect_task(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """'pose', 'segmentation' or 'classification' from a checkpoint's keys; None when they show none of them."""
    task = checkpoint_task(state_dict)
    if task is None:
        try:  # the segmentation releases' training wrapper ('model.' prefix, 'loss.*' buffers)
            task = checkpoint_task(read_task_checkpoint(state_dict).state_dict)
        except ValueError:  # an OpenMMLab layout, mmpretrain's classifiers among them
            task = None
    if task is None:
        try:
            task = CLASSIFICATION if detect_layout(state_dict) == MMPRETRAIN else None
        except ValueError:
            task = None
    return task


def task_repo_config(model: HRNetPose | HRNetSeg) -> dict[str, Any]:
    """config.json of a task repo: the task model's own `task_config()`, its architecture spec as ``hrnet_spec``
    (``architecture`` names the model kind, as in timm's config.json), through JSON so that it compares as read."""
    config = dict(model.task_config())
    spec = config.pop('architecture')
    task = config['task']
    return json.loads(json.dumps({'architecture': TASK_ARCHITECTURES[task], **config, 'hrnet_spec': spec}))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _build(loaded: TaskCheckpoint, task: str, input_size: tuple[int, int] | None,
           align_corners: bool | None, where: str) -> HRNetPose | HRNetSeg:
    """The task model holding the checkpoint's tensors; a key that does not fit becomes one line naming ``where``."""
    read_architecture(loaded.state_dict, task, source=where)  # another kind of checkpoint, named by ``where``
    try:
        if task == POSE:
            return create_pose_model(loaded.state_dict, input_size=input_size)
        return create_seg_model(loaded.state_dict, align_corners=align_corners)
    except CheckpointMismatchError as e:
        keys = [*e.missing, *e.unexpected, *e.mismatched]
        raise ValueError(f'{where} does not fit {e.model_name}: {len(e.missing)} missing, {len(e.unexpected)} '
                         f"unexpected, {len(e.mismatched)} mis-shaped keys (e.g. {', '.join(keys[:3])})") from e


def _settings(task: str, outputs: int, src: Path, input_size: tuple[int, int] | None,
              align_corners: bool | None) -> tuple[tuple[int, int] | None, bool | None, str]:
    """The input size (pose) or align_corners (segmentation) to publish, and where it comes from.

    Neither is stored in the checkpoint, so each must be stated unless the official release determines it: the
    input size by an official file name (``..._384x288.pth``), align_corners by a released model's class count.
    """
    if task == POSE:
        if align_corners is not None:
            raise ValueError('--align-corners does not apply to pose checkpoints (only segmentation models '
                             'upsample bilinearly)')
        if input_size is not None:
            return tuple(input_size), None, f'input size {input_size[0]}x{input_size[1]} as stated'
        named = _input_size_from_name(src)
        if named is None:
            raise ValueError(f"'{src}' does not say the input size it was trained at (the weights do not tell): pass "
                             '--input-size HxW (the official COCO models: 256x192 or 384x288)')
        return named, None, f"input size {named[0]}x{named[1]} from the file name '{src.name}'"
    if input_size is not None:
        raise ValueError('--input-size applies to pose checkpoints; segmentation models take any size (--image-size '
                         'sets the verification size)')
    if align_corners is not None:
        return None, align_corners, f'align_corners {align_corners} as stated'
    released = seg_dataset_for(outputs)
    if released is None:
        raise ValueError(f"'{src}' has {outputs} classes, no released HRNet segmentation model has that many: pass "
                         "--align-corners true|false as in its training config (MODEL.ALIGN_CORNERS; the official "
                         'code defaults to true, its Cityscapes, LIP and PASCAL-Context configs set false)')
    return None, released.align_corners, (f'align_corners {released.align_corners}: the official {released.name} '
                                           f'configs ({outputs} classes)')


def _resolve_facts(facts: TaskFacts, config: Mapping[str, Any], src: Path) -> TaskFacts:
    """The dataset is the one stated, else the released dataset of the model's label set; a stated one must fit it.

    Results need the dataset they were measured on, and the metrics of the task.
    """
    task = config['task']
    if task == POSE:
        labels, outputs, known = config['keypoints'], config['num_joints'], KEYPOINT_SETS.get(facts.dataset or '')
        count, what = (known.num_joints if known else None), 'joints'
    else:
        labels, outputs, known = config['dataset'], config['num_classes'], SEG_DATASETS.get(facts.dataset or '')
        count, what = (known.num_classes if known else None), 'classes'
    if count is not None and count != outputs:
        raise ValueError(f"'{src}' has {outputs} {what}, {facts.dataset} has {count}: state the dataset it was "
                         'trained on (--dataset)')
    dataset = facts.dataset or labels
    unknown = [name for name, _ in facts.metrics if name not in TASK_METRICS[task]]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a {task} metric; expected {', '.join(TASK_METRICS[task])}")
    if facts.metrics and dataset is None:
        raise ValueError(f"results need the dataset they were measured on: '{src}' has {outputs} {what}, which no "
                         'released model has; pass --dataset NAME')
    return replace(facts, dataset=dataset)


def _complexity(model: HRNetPose | HRNetSeg) -> Complexity:
    """Parameters, and MACs counted on a twin on the meta device (no memory, no compute): pose at its input size,
    segmentation at 512x1024."""
    size = model.input_size if isinstance(model, HRNetPose) else SEG_MACS_SIZE
    with torch.device('meta'):
        if isinstance(model, HRNetPose):
            twin: nn.Module = HRNetPose(model.spec, model.num_joints, model.final_conv_kernel, model.in_chans,
                                        model.input_size, model.keypoint_info)
        else:
            twin = HRNetSeg(model.spec, model.num_classes, model.final_conv_kernel, model.in_chans, model.dataset)
        with FlopCounterMode(display=False) as counter:
            twin.eval()(torch.empty(1, model.in_chans, *size))
    params = sum(p.numel() for p in model.parameters())
    return Complexity(params=params, macs=counter.get_total_flops() // 2, input_size=(model.in_chans, *size))


def _verification_sentence(report: TaskVerifyReport, task: str) -> str:
    return (f'hub_upload could check this conversion only for self-consistency: the model rebuilt from this '
            f"repo's model.safetensors and config.json reproduces timm_hrnet's model of the source checkpoint "
            f'(relative difference {report.relative_diff:.2g}); no independent implementation of the official '
            f'{_CODE[task]} code was available to compare with.')


def convert_task_to_dir(
        src: FetchedFile | str | os.PathLike,
        out_dir: str | os.PathLike,
        task: str | None = None,
        force: bool = False,
        repo_id: str | None = None,
        facts: TaskFacts | None = None,
        input_size: tuple[int, int] | None = None,
        align_corners: bool | None = None,
        num_outputs: int | None = None,
        rtol: float = 1e-4,
        verify_image_size: int | None = None,
        log: Callable[[str], None] = _stderr,
) -> StageResult:
    """Write model.safetensors, config.json, README.md and the marker of a pose or segmentation checkpoint.

    ``task`` (default: detected) must be the checkpoint's. ``input_size`` (pose: height, width) and
    ``align_corners`` (segmentation) are not stored in checkpoints: each must be given unless the official release
    determines it (see ``_settings``). ``num_outputs``, when given, must be the checkpoint's joints / classes. The
    staging, verification (``rtol``: relative max difference) and replacement rules are the classifiers'
    (``stage.stage_repo``).
    """
    fetched = src if isinstance(src, FetchedFile) else resolve_checkpoint(src)
    src, out_dir = fetched.path, Path(out_dir)
    recover_interrupted(out_dir, log)
    check_target(out_dir, force, sources=[src])
    loaded = read_task_checkpoint(src)
    found = detect_task(loaded.state_dict)
    task = task or found
    if task not in TASK_ARCHITECTURES or found != task:
        kind = f'an HRNet {found} checkpoint' if found else 'not an HRNet pose or segmentation checkpoint'
        raise ValueError(f"'{src}' is {kind}" + (f', not a {task} one' if task in TASK_ARCHITECTURES else '')
                         + ('; for a classifier pass --model' if found == CLASSIFICATION else ''))
    if loaded.dropped:
        log(f"dropped training-only keys of '{src.name}': {', '.join(loaded.dropped)}")
    arch = read_architecture(loaded.state_dict, task, source=f"'{src}'")
    if num_outputs is not None and num_outputs != arch.num_outputs:
        what = 'joints' if task == POSE else 'classes'
        raise ValueError(f"'{src}' has {arch.num_outputs} {what}, not the {num_outputs} stated")
    size, align, origin = _settings(task, arch.num_outputs, src, input_size, align_corners)
    model = _build(loaded, task, size, align, f"'{src}'")
    config = task_repo_config(model)
    facts = _resolve_facts(facts or TaskFacts(), config, src)
    state_dict = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    architecture = config['architecture']
    repo_id = repo_id or f'YOUR_ORG/{out_dir.name}'  # push warns when the card names another repo

    def fill(staging: Path) -> TaskVerifyReport:
        metadata = weights_metadata(fetched, architecture, 'official', converted_with='timm_hrnet.task_checkpoints',
                                    task=task)
        _write(staging / WEIGHTS_NAME, out_dir,
               lambda: safetensors.torch.save_file(state_dict, staging / WEIGHTS_NAME, metadata=metadata))
        _write(staging / 'config.json', out_dir,
               lambda: (staging / 'config.json').write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8'))
        report = verify_task_dir(staging, against=fetched, rtol=rtol, image_size=verify_image_size)
        if not report.ok:
            raise VerificationError(f"nothing was written to '{out_dir}': {report.summary()}")
        card = build_task_model_card(repo_id, config, _complexity(model), facts, src.name, fetched.sha256,
                                     _verification_sentence(report, task))
        _write(staging / 'README.md', out_dir, lambda: card.save(staging / 'README.md'))
        return report

    report, files = stage_repo(out_dir, force, src, fill, {
        'version': _version(), 'architecture': architecture, 'task': task, 'source_file': src.name,
        'source_sha256': fetched.sha256})
    return StageResult(out_dir=out_dir, architecture=architecture, num_classes=arch.num_outputs,
                       source_sha256=fetched.sha256, report=replace(report, repo_dir=out_dir),
                       preprocessing_origin=origin, files=files)


@dataclass(frozen=True)
class TaskVerifyReport:
    """Like ``verify.VerifyReport``, for task repos: relative max difference, self-consistency only."""

    repo_dir: Path
    architecture: str
    against: str
    reference: str
    relative_diff: float  # max |repo - reference| / max |reference|
    max_abs_diff: float
    rtol: float
    problems: tuple[str, ...] = ()
    independent: bool = False  # the official task code is not available: never an independent check

    @property
    def ok(self) -> bool:
        return not self.problems and self.relative_diff <= self.rtol

    def summary(self) -> str:
        """One line: verdict, what was compared through what, the differences and any problems."""
        verdict = 'OK' if self.ok else 'FAILED'
        line = (f'verify {verdict} (self-consistency only): {self.repo_dir} ({self.architecture}) vs {self.against} '
                f'through {self.reference}: relative max diff {self.relative_diff:.3g} (tolerance {self.rtol:g}), '
                f'max abs diff {self.max_abs_diff:.3g}')
        return '; '.join([line, *self.problems])


def _settings_from_config(config: Mapping[str, Any], path: Path) -> tuple[tuple[int, int] | None, bool | None]:
    """config.json's input size (pose) or align_corners (segmentation), named when missing or malformed."""
    if config['task'] == POSE:
        size = config.get('input_size')
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) for v in size)):
            raise ValueError(f"'{path}' has no valid 'input_size' field ([channels, height, width]): {size!r}")
        return (size[1], size[2]), None
    align_corners = config.get('align_corners')
    if not isinstance(align_corners, bool):
        raise ValueError(f"'{path}' has no valid 'align_corners' field (true or false): {align_corners!r}")
    return None, config['align_corners']


def verify_task_dir(
        repo_dir: str | os.PathLike,
        against: FetchedFile | str | os.PathLike | None = None,
        rtol: float = 1e-4,
        batch_size: int = 2,
        image_size: int | None = None,
        seed: int = 0,
) -> TaskVerifyReport:
    """Rebuild a task repo from its model.safetensors and config.json, as its card tells users to, and compare it on
    fixed random images with timm_hrnet's model of the source checkpoint ``against`` (same input size /
    align_corners). config.json must be what the weights build. Without ``against`` only that and finite outputs
    are checked. ``image_size`` (N: N x N) defaults to the pose input size, 256x256 for segmentation.
    """
    repo_dir = Path(repo_dir)
    config_path = repo_dir / 'config.json'
    config = json.loads(config_path.read_text(encoding='utf-8'))
    task = config.get('task')
    if task not in TASK_ARCHITECTURES:
        raise ValueError(f"'{config_path}' has no 'task' field naming pose or segmentation: {task!r}")
    size, align = _settings_from_config(config, config_path)
    architecture = str(config.get('architecture'))
    problems = []
    if architecture != TASK_ARCHITECTURES[task]:
        problems.append(f"config.json's architecture is {architecture!r}, a {task} repo's is "
                        f'{TASK_ARCHITECTURES[task]!r}')
    loaded = _build(read_task_checkpoint(repo_dir / WEIGHTS_NAME), task, size, align, f"'{repo_dir / WEIGHTS_NAME}'")
    rebuilt = task_repo_config(loaded)
    differing = sorted(key for key in rebuilt.keys() | config.keys() if rebuilt.get(key) != config.get(key))
    if differing:
        problems.append(f"config.json does not match what its weights build: {', '.join(differing)}")
    reference_text = f"timm_hrnet's {_CREATE[task]} on the source (no independent {_CODE[task]} is installed)"
    if against is None:
        description, reference_text, reference = 'its own weights', f"timm_hrnet's {_CREATE[task]}", loaded
    else:
        if not isinstance(against, FetchedFile):
            against = resolve_checkpoint(against)
        description = str(against.url or against.path)
        recorded = read_weights_metadata(repo_dir / WEIGHTS_NAME).get('source_sha256')
        if recorded and recorded != against.sha256:
            problems.append(f'{against.path.name} has sha256 {against.sha256}, the repo records {recorded}')
        try:
            source = read_task_checkpoint(against.path)
            reference = _build(source, task, size, align, f"'{against.path}'")
        except ValueError as e:  # another kind of checkpoint, or one that does not fit: a failed verification
            return TaskVerifyReport(repo_dir, architecture, description, reference_text, float('inf'), float('inf'),
                                    rtol, (*problems, f'the source does not load: {_first_line(e)}'))
    height, width = (image_size, image_size) if image_size is not None else size or SEG_VERIFY_SIZE
    images = torch.randn(batch_size, loaded.in_chans, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected, actual = reference(images).float(), loaded(images).float()
    if expected.shape != actual.shape:
        problems.append(f'output shape {tuple(actual.shape)} differs from the reference {tuple(expected.shape)}')
        max_abs_diff = relative_diff = float('inf')
    else:
        max_abs_diff = (expected - actual).abs().max().item()
        relative_diff = max_abs_diff / max(expected.abs().max().item(), torch.finfo(torch.float32).tiny)
    if not torch.isfinite(actual).all():
        problems.append('the rebuilt model produces non-finite outputs')
    return TaskVerifyReport(repo_dir, architecture, description, reference_text, relative_diff, max_abs_diff, rtol,
                            tuple(problems))
