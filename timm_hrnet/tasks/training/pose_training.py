"""`train_pose`: top-down keypoint training on COCO-format annotations, the official HRNet recipe by default
(Adam, lr 1e-3, x0.1 at epochs 170 and 200 of 210, scaled to the epochs asked for; the augmentations of
`pose_data.PoseAugmentation`; Gaussian targets with sigma 2 at stride 4; JointsMSELoss with target weights)."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...checkpoints import POSE
from ...distributed import process_group
from ...variants import resolve_variant
from ..datasets import KeypointInfo, resolve_keypoints
from ..pose import DEFAULT_INPUT_SIZE, HRNetPose, create_pose_model
from ..pose_codecs import PoseCodec, parse_codec
from ..pose_evaluation import evaluate_pose, load_keypoint_annotations
from ..saved_config import CONFIG_FILE, WEIGHTS_FILE, read_model_config
from .checkpointing import save_sidecar, save_weights
from .config import Recipe, TrainConfig, resolve_config
from .losses import JointsMSELoss
from .model_init import ModelInit, classifier_state_dict, is_checkpoint, load_trunk
from .pose_data import PoseAugmentation, PoseTrainDataset, read_pose_annotations
from .samples import BadSampleError, data_fingerprint
from .trainer import TrainResult, TrainTask, resume_path, run_training

__all__ = ['POSE_RECIPE', 'PoseTrainConfig', 'train_pose', 'build_pose_model', 'load_pose_model']

# experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml: 32 per GPU on 4 GPUs (global 128), 210 epochs; the official
# get_optimizer builds Adam without the config's WD, so no weight decay
POSE_RECIPE = Recipe(epochs=210, batch_size=32, optimizer='adam', lr=1e-3, weight_decay=0.0, schedule='step',
                     lr_steps=(170 / 210, 200 / 210))


@dataclass(frozen=True)
class PoseTrainConfig(TrainConfig):
    """`TrainConfig` plus the pose data: input (height, width), target sigma (heatmap pixels), heatmap codec (None:
    the checkpoint's when fine-tuning one, else official; 'dark' / 'udp' train with their targets and crop),
    augmentation, and the evaluation's flip test and batch size."""

    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    sigma: float = 2.0
    codec: str | None = None
    augmentation: PoseAugmentation = PoseAugmentation()
    eval_flip_test: bool = True
    eval_batch_size: int = 32


def build_pose_model(init: ModelInit, keypoints: KeypointInfo, input_size: tuple[int, int],
                     pretrained: bool = True, pretrained_file: str | PathLike | None = None,
                     codec: PoseCodec | str | None = None) -> HRNetPose:
    """The model to train: a given `HRNetPose`; a pose checkpoint (`create_pose_model`, the head re-initialised when
    the joint count differs); or a variant name (`hrnet_w32`, `hrnet_w48.ms_in1k`, ...) with the trunk of its
    ImageNet classifier (`pretrained`, optionally from `pretrained_file`) or from scratch. `codec` replaces the
    model's (a checkpoint's only where it does not contradict what the file says)."""
    if isinstance(init, nn.Module):
        if not isinstance(init, HRNetPose) or init.num_joints != keypoints.num_joints:
            raise ValueError(f'the model to train must be an HRNetPose with {keypoints.num_joints} joints')
        model = init
        model.codec = parse_codec(codec) if codec is not None else model.codec
    elif is_checkpoint(init):
        model = create_pose_model(init, num_joints=keypoints.num_joints, input_size=input_size, keypoint_info=keypoints,
                                  codec=codec)
    else:
        spec = dataclasses.replace(resolve_variant(os.fspath(init)), multi_scale_output=False)
        model = HRNetPose(spec, keypoints.num_joints, input_size=input_size, keypoint_info=keypoints,
                          codec=codec or 'official')
        if pretrained:
            load_trunk(model, classifier_state_dict(os.fspath(init), pretrained_file), 'final_layer.',
                       os.fspath(pretrained_file or init))
    model.input_size = (int(input_size[0]), int(input_size[1]))
    model.keypoint_info = keypoints
    return model.train()


def _check_evaluation(val_ann_file: str | PathLike, val_image_dir: str | PathLike,
                      keypoints: KeypointInfo) -> None:
    """What the evaluation after the first epoch would trip over, found before training starts."""
    if importlib.util.find_spec('pycocotools') is None:
        raise ImportError('evaluating on a validation split needs pycocotools: pip install "timm-hrnet[eval]"')
    if keypoints.sigmas is None:
        raise ValueError(f'the keypoint set {keypoints.name!r} has no OKS sigmas, which the COCO evaluation '
                         'needs: give them in the keypoint file ("sigmas")')
    _, category = load_keypoint_annotations(val_ann_file)
    if len(category['keypoints']) != keypoints.num_joints:
        raise BadSampleError(f'{val_ann_file} annotates {len(category["keypoints"])} keypoints, the training set '
                             f'{keypoints.num_joints}')
    annotations = read_pose_annotations(val_ann_file, val_image_dir, on_bad_sample='skip')
    missing = annotations.skipped.get('missing images', 0)
    if missing:
        raise BadSampleError(f'{val_ann_file}: {missing} images missing under {val_image_dir}')


def train_pose(
        ann_file: str | PathLike,
        image_dir: str | PathLike,
        *,
        init: ModelInit = 'hrnet_w32',
        pretrained: bool = True,
        pretrained_file: str | PathLike | None = None,
        keypoints: KeypointInfo | str | PathLike | None = None,
        val_ann_file: str | PathLike | None = None,
        val_image_dir: str | PathLike | None = None,
        config: PoseTrainConfig | None = None,
        **options: Any,
) -> TrainResult:
    """Train a top-down pose model on a COCO keypoint annotation file and its images; under torchrun on every rank.

    `init` is a variant name (the trunk of its ImageNet classifier when `pretrained`, e.g. 'hrnet_w32'), a pose
    checkpoint to fine-tune, or an `HRNetPose`. `keypoints` (a `KeypointInfo` or a JSON / YAML file) defaults to
    the annotation's category. `options` override fields of `config` (a `PoseTrainConfig`). With a validation
    split, COCO AP on its ground-truth boxes is measured every `eval_every` epochs. The trained model is written
    to `<output_dir>/model.safetensors` with `config.json` (`load_pose_model` reads them back, as does
    `create_pose_model` on the weights file).
    """
    config = resolve_config(dataclasses.replace(config or PoseTrainConfig(), **options), POSE_RECIPE)
    if (val_ann_file is None) != (val_image_dir is None):
        raise ValueError('give both val_ann_file and val_image_dir, or neither')
    with process_group(config.device) as context:
        annotations = read_pose_annotations(ann_file, image_dir, config.on_bad_sample)
        keypoints = resolve_keypoints(keypoints, annotations.category)
        if val_ann_file is not None:
            _check_evaluation(val_ann_file, val_image_dir, keypoints)
        torch.manual_seed(config.seed)  # the same initial weights on every rank and in every run
        resuming = resume_path(config) is not None  # the trunk's weights would be overwritten: not fetched
        model = build_pose_model(init, keypoints, config.input_size, pretrained and not resuming, pretrained_file,
                                 config.codec)
        dataset = PoseTrainDataset(annotations.samples, keypoints, config.input_size, model.mean, model.std,
                                   config.augmentation, config.sigma, config.seed, config.on_bad_sample, model.codec)
        criterion = JointsMSELoss()

        def loss(module: nn.Module, batch: dict[str, Tensor]) -> Tensor:
            return criterion(module(batch['image']), batch['target'], batch['target_weight'])

        def evaluate(trained: nn.Module) -> dict[str, Any]:
            return evaluate_pose(trained, val_ann_file, val_image_dir, gt_boxes=True, flip_test=config.eval_flip_test,
                                 keypoint_sigmas=keypoints.sigmas, batch_size=config.eval_batch_size,
                                 progress=config.progress)

        def export(state_dict: dict[str, Tensor], output_dir: Path) -> dict[str, str]:
            weights, sidecar = output_dir / WEIGHTS_FILE, output_dir / CONFIG_FILE
            save_weights(weights, state_dict)
            save_sidecar(sidecar, dict(model.task_config(), keypoint_set=keypoints.to_json(),
                                       input_size_hw=list(config.input_size), weights=WEIGHTS_FILE,
                                       ema=config.ema_decay is not None, trained_on=os.fspath(ann_file)))
            return dict(weights=str(weights), config=str(sidecar))

        task = TrainTask('pose', model, dataset, loss, export, POSE_RECIPE,
                         evaluate if val_ann_file is not None else None,
                         scan=dict(samples=len(annotations.samples), ignored=annotations.ignored,
                                   skipped=annotations.skipped, keypoints=keypoints.name,
                                   joints=keypoints.num_joints,
                                   init=os.fspath(init) if isinstance(init, (str, PathLike)) else type(init).__name__),
                         fingerprint=data_fingerprint(
                             [s.image.relative_to(image_dir).as_posix(), list(s.image_size), list(s.box),
                              s.joints.tolist(), s.labelled.tolist()] for s in annotations.samples))
        return run_training(task, config, context)


def load_pose_model(output_dir: str | PathLike, device: torch.device | str | None = None) -> HRNetPose:
    """The model a `train_pose` run exported (its folder or `model.safetensors` with `config.json` beside it; a
    repo `hub_upload convert` staged reads the same), with its input size, keypoint set (names, flip pairs, OKS
    sigmas) and decoding rule, in eval mode. Unlike `create_pose_model`, it refuses weights without that
    config.json."""
    config = read_model_config(output_dir, POSE)
    return create_pose_model(config.weights, device=device)
