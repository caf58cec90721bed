"""The pose and segmentation kinds: a task checkpoint (the official pose_hrnet / seg_hrnet release, or OpenMMLab's
mmpose / mmseg HRNet models) becomes a timm_hrnet repo of float32 safetensors with the official keys, a config.json
that rebuilds the model through timm_hrnet (these are not timm classifiers), and a card.

config.json is the model's own ``task_config()`` plus the layout the source came in (``source_layout``, one of
``names.TASK_LAYOUTS``): the keys are the official ones whatever the source, but mmseg's model computes its
resizes its own way (``hrnet_spec.upsample_by_stride``, align_corners False throughout), which the tensors do not
show. What differs between the two tasks is data on a `TaskKind` and three small methods.

A model trained by ``timm-hrnet train-pose`` / ``train-seg`` publishes the same way: its output folder (or its
model.safetensors) carries a config.json (`timm_hrnet.tasks.saved_config`) with what the weights cannot tell,
the input size or align_corners and a label set that is no built-in one (keypoint names, flip pairs, OKS sigmas;
class names, palette, class flip pairs), which the repo's config.json and card then carry too.

Verification is self-consistency only: no official task code is installable here, so the repo rebuilt from its
model.safetensors and config.json (as its card tells users to) is compared with timm_hrnet's own model of the source
checkpoint, read again by its own path (timm_hrnet's task models are themselves tested against outputs of the
official code, docs/tasks.md). Reports and cards say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from timm_hrnet.checkpoints import (
    CANONICAL,
    LAYOUT_NAMES,
    OCR,
    POSE,
    SEGMENTATION,
    Checkpoint,
    CheckpointMismatchError,
    read_architecture,
    read_checkpoint,
)
from timm_hrnet.complexity import model_params_and_macs
from timm_hrnet.download import FetchedFile
from timm_hrnet.tasks.datasets import KEYPOINT_SETS, SEG_DATASETS, seg_dataset_for
from timm_hrnet.tasks.pose import HRNetPose, create_pose_model, input_size_from_name
from timm_hrnet.tasks.saved_config import ModelConfig, config_beside, label_fields
from timm_hrnet.tasks.segmentation import OFFICIAL_OCR_ALIGN_CORNERS, HRNetSeg, create_seg_model

from .kinds import Comparison, Prepared, RepoKind, float32_tensors
from .model_card import Complexity, TaskFacts, build_task_model_card
from .names import TASK_ARCHITECTURES, TASK_LAYOUTS, TASK_METRICS, WEIGHTS_NAME
from .report import VerifyReport
from .source import Source

__all__ = ['POSE_KIND', 'SEGMENTATION_KIND', 'TASK_KINDS', 'TaskKind', 'TaskOptions', 'repo_layout',
           'task_repo_config']

SEG_MACS_SIZE = (512, 1024)  # segmentation GMACs on the card: the Cityscapes training crop, as tables usually quote
# default verification input of segmentation repos: any size works; a width that is no multiple of 32 is where
# mmseg's two-step resize gives other numbers than one resize, so a repo that lost it fails there
SEG_VERIFY_SIZE = (256, 200)
_OFFICIAL = 'official'  # how task repos name the canonical layout (names.TASK_LAYOUTS)


def repo_layout(layout: str) -> str:
    """A checkpoint layout as task repos record it: the canonical one of the releases is 'official'."""
    return _OFFICIAL if layout == CANONICAL else layout


def task_repo_config(model: HRNetPose | HRNetSeg, layout: str = _OFFICIAL) -> dict[str, Any]:
    """config.json of a task repo: the task model's own `task_config()`, what it takes to rebuild a label set that
    is not a built-in one (a custom keypoint set, a segmentation palette and class flip pairs:
    `saved_config.label_fields`), its architecture spec as ``hrnet_spec`` (``architecture`` names the model
    kind, as in timm's config.json) and the source's layout, through JSON so that it compares as read."""
    config = dict(model.task_config())
    spec = config.pop('architecture')
    task = config['task']
    if task == POSE:
        labels = label_fields(model.keypoint_info, None, model.num_joints)
    else:
        labels = label_fields(None, model.dataset, model.num_classes)
    config.update({key: value for key, value in labels.items() if key not in config})
    return json.loads(json.dumps({'architecture': TASK_ARCHITECTURES[task], **config, 'hrnet_spec': spec,
                                  'source_layout': layout}))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _differing(built: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    return sorted(key for key in built.keys() | config.keys() if built.get(key) != config.get(key))


@dataclass(frozen=True)
class TaskOptions:
    """What a caller states about a task checkpoint: the task (None: detected) and layout (auto: detected), card
    facts, what the checkpoint does not store (pose input size, segmentation align_corners), the joint / class
    count it must have and the tolerance on the relative max difference."""

    task: str | None = None
    source: str = 'auto'
    facts: TaskFacts | None = None
    input_size: tuple[int, int] | None = None
    align_corners: bool | None = None
    num_outputs: int | None = None
    rtol: float = 1e-4

    def kind_for(self, checkpoint: Checkpoint) -> RepoKind:
        found = checkpoint.task
        task = self.task or found
        if task not in TASK_KINDS or found != task:
            kind = f'an HRNet {found} checkpoint' if found else 'not an HRNet pose or segmentation checkpoint'
            raise ValueError(f'{checkpoint.source} is {kind}' + (f', not a {task} one' if task in TASK_KINDS else '')
                             + ('; for a classifier pass --model' if found == 'classification' else ''))
        layout = repo_layout(checkpoint.layout.name)
        if self.source != 'auto' and self.source != layout:
            if self.source not in TASK_LAYOUTS[task]:
                raise ValueError(f"--source {self.source} does not apply to {task} checkpoints (layouts: "
                                 f"{', '.join(TASK_LAYOUTS[task])})")
            raise ValueError(f'{checkpoint.source} is a {task} checkpoint in the {layout} layout, not {self.source}')
        return TASK_KINDS[task]


@dataclass(frozen=True)
class TaskKind:
    """What a task's repos need to know about it; `PoseKind` / `SegmentationKind` add how its settings are found."""

    name: str
    code: str  # the official code's name
    create: str  # timm_hrnet's constructor, for reports
    outputs_key: str  # config.json's joint / class count
    labels_key: str  # config.json's label set
    unit: str  # what the outputs are
    label_sets: Mapping[str, Any]  # the released label sets by name (KEYPOINT_SETS / SEG_DATASETS)
    tolerance: str = 'rtol'

    @property
    def description(self) -> str:
        return f'a {self.name}'

    @property
    def architecture(self) -> str:
        return TASK_ARCHITECTURES[self.name]

    @property
    def sources(self) -> tuple[str, ...]:
        return ('auto', *TASK_LAYOUTS[self.name])

    # --- what differs between the tasks (the subclasses) ---

    def settings(self, checkpoint: Checkpoint, src: Path, options: TaskOptions, exported: ModelConfig | None
                 ) -> tuple[tuple[int, int] | None, bool | None, str]:
        """The input size (pose) or align_corners (segmentation) to publish, and where it comes from; a training
        run's config.json beside the source (``exported``) states it, and a stated value must agree."""
        raise NotImplementedError

    def settings_from_config(self, config: Mapping[str, Any], path: Path
                             ) -> tuple[tuple[int, int] | None, bool | None]:
        raise NotImplementedError

    def create_model(self, checkpoint: Checkpoint, size: tuple[int, int] | None, align: bool | None,
                     exported: ModelConfig | None) -> HRNetPose | HRNetSeg:
        """The model of ``checkpoint``, with the label set of the config.json that describes it (``exported``)."""
        raise NotImplementedError

    def complexity_size(self, model: HRNetPose | HRNetSeg) -> tuple[int, int]:
        raise NotImplementedError

    def verify_size(self, size: tuple[int, int] | None) -> tuple[int, int]:
        raise NotImplementedError

    # --- shared ---

    def build(self, checkpoint: Checkpoint, size: tuple[int, int] | None, align: bool | None, where: str,
              exported: ModelConfig | None = None) -> HRNetPose | HRNetSeg:
        """The task model holding the checkpoint's tensors (and ``exported``'s label set); a key that does not fit
        becomes one line naming ``where``."""
        if exported is not None and exported.task != self.name:
            raise ValueError(f"'{exported.path}' describes a {exported.task} model, but {where} is a {self.name} "
                             'checkpoint')
        try:
            return self.create_model(checkpoint, size, align, exported)
        except CheckpointMismatchError as e:
            keys = [*e.missing, *e.unexpected, *e.mismatched]
            raise ValueError(f'{where} does not fit {e.model_name}: {len(e.missing)} missing, {len(e.unexpected)} '
                             f"unexpected, {len(e.mismatched)} mis-shaped keys (e.g. {', '.join(keys[:3])})") from e

    def _resolve_facts(self, facts: TaskFacts, config: Mapping[str, Any], src: Path) -> TaskFacts:
        """The dataset is the one stated, else the released dataset of the model's label set; a stated one must fit
        it. Results need the dataset they were measured on, and the metrics of the task."""
        outputs, labels = config[self.outputs_key], config[self.labels_key]
        known = self.label_sets.get(facts.dataset or '')
        count = None if known is None else getattr(known, self.outputs_key)
        if count is not None and count != outputs:
            raise ValueError(f"'{src}' has {outputs} {self.unit}, {facts.dataset} has {count}: state the dataset it "
                             'was trained on (--dataset)')
        named = self.label_sets.get(labels) if isinstance(labels, str) else None  # not a checkpoint's own labels
        dataset = facts.dataset or (labels if named is not None and getattr(named, self.outputs_key) == outputs
                                    else None)
        unknown = [name for name, _ in facts.metrics if name not in TASK_METRICS[self.name]]
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a {self.name} metric; expected "
                             f"{', '.join(TASK_METRICS[self.name])}")
        if facts.metrics and dataset is None:
            raise ValueError(f"results need the dataset they were measured on: '{src}' has {outputs} {self.unit}, "
                             'which no released model has; pass --dataset NAME')
        return replace(facts, dataset=dataset)

    def _complexity(self, model: HRNetPose | HRNetSeg) -> Complexity:
        """Parameters, and MACs counted on a meta-device copy: pose at its input size, segmentation at 512x1024."""
        size = (model.in_chans, *self.complexity_size(model))
        params, macs = model_params_and_macs(model, size)
        return Complexity(params=params, macs=macs, input_size=size)

    def _code(self, layout: str, config: Mapping[str, Any] | None = None) -> str:
        """The code that wrote the source: the official pose_hrnet / seg_hrnet / seg_hrnet_ocr, or OpenMMLab's."""
        code = 'seg_hrnet_ocr' if config is not None and config.get('head') == OCR else self.code
        return f'the official {code}' if layout == _OFFICIAL else f"{layout}'s"

    def _verification_sentence(self, report: VerifyReport, layout: str, config: Mapping[str, Any]) -> str:
        return (f'hub_upload could check this conversion only for self-consistency: the model rebuilt from this '
                f"repo's model.safetensors and config.json reproduces timm_hrnet's model of the source checkpoint "
                f'(relative difference {report.relative_diff:.2g}); no independent implementation of '
                f'{self._code(layout, config)} code was available to compare with.')

    def prepare(self, source: Source, options: TaskOptions, repo_id: str, log: Callable[[str], None]) -> Prepared:
        checkpoint, src = source.checkpoint, source.path
        arch = checkpoint.architecture  # worked out once, by read_checkpoint
        if options.num_outputs is not None and options.num_outputs != arch.num_outputs:
            raise ValueError(f"'{src}' has {arch.num_outputs} {self.unit}, not the {options.num_outputs} stated")
        exported = source.exported
        size, align, origin = self.settings(checkpoint, src, options, exported)
        model = self.build(checkpoint, size, align, f"'{src}'", exported)
        layout = repo_layout(checkpoint.layout.name)
        config = task_repo_config(model, layout)
        facts = options.facts or TaskFacts()
        if exported is not None and exported.from_training and facts.source_title is None:
            command = 'train-pose' if self.name == POSE else 'train-seg'
            facts = replace(facts, source_title=f'a timm_hrnet training run (`timm-hrnet {command}`)')
        facts = self._resolve_facts(facts, config, src)
        complexity = self._complexity(model)
        if checkpoint.dropped:  # once the checkpoint is known to convert: a refusal stays one line
            log(f"dropped training-only keys of '{src.name}': {', '.join(checkpoint.dropped)}")

        def card(report: VerifyReport):
            return build_task_model_card(repo_id, config, complexity, facts, src.name, source.fetched.sha256,
                                         self._verification_sentence(report, layout, config))

        def write_config(path: Path) -> None:
            path.write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')

        return Prepared(
            architecture=config['architecture'], num_outputs=arch.num_outputs,
            state_dict=float32_tensors(model.state_dict()), layout=layout, write_config=write_config, card=card,
            origin=origin, converted_with='timm_hrnet.checkpoints', recorded={'task': self.name},
            verify_options=dict(source=layout, rtol=options.rtol),
        )

    def _recorded_layout(self, config: Mapping[str, Any], path: Path) -> str:
        layout = config.get('source_layout', _OFFICIAL)  # repos staged before layouts were recorded: official
        if layout not in TASK_LAYOUTS[self.name]:
            raise ValueError(f"'{path}' has source_layout {layout!r}; a {self.name} repo's is one of "
                             f"{', '.join(TASK_LAYOUTS[self.name])}")
        return layout

    def published(self, weights: Path, layout: str, config: Mapping[str, Any]) -> Checkpoint:
        """A repo's weights as its card loads them: the official keys, the architecture as the recorded layout
        computes it (mmseg's resizes), the class names config.json states (the weights do not carry them)."""
        checkpoint = read_checkpoint(weights)
        if layout != _OFFICIAL and checkpoint.architecture is not None:
            architecture = read_architecture(checkpoint.state_dict, self.name, checkpoint.source, LAYOUT_NAMES[layout])
            checkpoint = replace(checkpoint, architecture=architecture)
        names = config.get('class_names')
        if isinstance(names, list) and names and all(isinstance(name, str) for name in names):
            checkpoint = replace(checkpoint, class_names=tuple(names))
        return checkpoint

    def comparison(self, repo_dir: Path, config: dict[str, Any], against: FetchedFile | None,
                   source: str) -> Comparison:
        """The repo rebuilt as its card says, checked to be what config.json describes, and timm_hrnet's model of
        the source (same input size / align_corners) to reproduce; config.json must describe the source's model."""
        config_path = repo_dir / 'config.json'
        size, align = self.settings_from_config(config, config_path)
        layout = self._recorded_layout(config, config_path)
        problems = []
        if config.get('architecture') != self.architecture:
            problems.append(f"config.json's architecture is {config.get('architecture')!r}, a {self.name} repo's is "
                            f'{self.architecture!r}')
        weights = repo_dir / WEIGHTS_NAME
        own = config_beside(weights)  # config.json as the loaders read it: the label set it spells out
        loaded = self.build(self.published(weights, layout, config), size, align, f"'{weights}'", own)
        differing = _differing(task_repo_config(loaded, layout), config)
        if differing:
            problems.append(f"config.json does not match what its weights build: {', '.join(differing)}")
        input_size = (loaded.in_chans, *self.verify_size(size))
        if against is None:
            return Comparison(loaded, loaded, f"timm_hrnet's {self.create}", False, input_size, tuple(problems))
        code = self.code if layout == _OFFICIAL else layout
        reference_text = f"timm_hrnet's {self.create} on the source (no independent {code} is installed)"
        try:  # another kind of checkpoint, or one that does not fit: a failed verification
            checkpoint = read_checkpoint(against.path)
            found = repo_layout(checkpoint.layout.name)
            if source not in ('auto', found):
                raise ValueError(f"'{against.path}' is in the {found} layout, not {source}")
            exported = None if against.url else config_beside(against.path)  # a training run's, read again
            if exported is not None:  # what the run states, so that config.json must agree with it
                size = exported.input_size or size
                align = align if exported.align_corners is None else exported.align_corners
            reference = self.build(checkpoint, size, align, f"'{against.path}'", exported)
        except ValueError as e:
            return Comparison(loaded, None, reference_text, False, input_size, tuple(problems),
                              failure=f'the source does not load: {_first_line(e)}')
        differing = _differing(task_repo_config(reference, found), config)
        if differing:
            problems.append(f"config.json does not describe the source's model: {', '.join(differing)}")
        return Comparison(loaded, reference, reference_text, False, input_size, tuple(problems))


class PoseKind(TaskKind):
    def settings(self, checkpoint: Checkpoint, src: Path, options: TaskOptions, exported: ModelConfig | None
                 ) -> tuple[tuple[int, int] | None, bool | None, str]:
        """The crop size: stated, the training run's config.json, else from a released file name
        (``..._384x288.pth``); the weights do not tell."""
        if options.align_corners is not None:
            raise ValueError('--align-corners does not apply to pose checkpoints (only segmentation models '
                             'upsample bilinearly)')
        trained = exported.input_size if exported is not None else None
        if options.input_size is not None:
            height, width = options.input_size
            if trained is not None and trained != (height, width):
                raise ValueError(f"--input-size {height}x{width}: '{exported.path}' says the model was trained at "
                                 f'{trained[0]}x{trained[1]}')
            return (height, width), None, f'input size {height}x{width} as stated'
        if trained is not None:
            return trained, None, f"input size {trained[0]}x{trained[1]} from '{exported.path}'"
        named = input_size_from_name(src)
        if named is None:
            raise ValueError(f"'{src}' does not say the input size it was trained at (the weights do not tell): pass "
                             '--input-size HxW (the official COCO models: 256x192 or 384x288)')
        return named, None, f"input size {named[0]}x{named[1]} from the file name '{src.name}'"

    def settings_from_config(self, config: Mapping[str, Any], path: Path
                             ) -> tuple[tuple[int, int] | None, bool | None]:
        size = config.get('input_size')
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) for v in size)):
            raise ValueError(f"'{path}' has no valid 'input_size' field ([channels, height, width]): {size!r}")
        return (size[1], size[2]), None

    def create_model(self, checkpoint: Checkpoint, size: tuple[int, int] | None, align: bool | None,
                     exported: ModelConfig | None) -> HRNetPose:
        return create_pose_model(checkpoint, input_size=size,
                                 keypoint_info=exported.keypoints if exported is not None else None)

    def complexity_size(self, model: HRNetPose) -> tuple[int, int]:
        return model.input_size

    def verify_size(self, size: tuple[int, int] | None) -> tuple[int, int]:
        return size


class SegmentationKind(TaskKind):
    def settings(self, checkpoint: Checkpoint, src: Path, options: TaskOptions, exported: ModelConfig | None
                 ) -> tuple[tuple[int, int] | None, bool | None, str]:
        """align_corners: fixed by the layout (mmseg), the training run's config.json, stated, or the official
        config of the released model with the checkpoint's class count; not stored in the weights."""
        if options.input_size is not None:
            raise ValueError('--input-size applies to pose checkpoints; segmentation models take any size '
                             '(--image-size sets the verification size)')
        arch, stated = checkpoint.architecture, options.align_corners
        if arch.align_corners is not None:
            if stated not in (None, arch.align_corners):
                raise ValueError(f'{checkpoint.source} is an {checkpoint.layout.name} checkpoint: its model resizes '
                                 f'with align_corners={arch.align_corners} throughout, not {stated}')
            return None, arch.align_corners, (f'align_corners {arch.align_corners}: {checkpoint.layout.name} models '
                                              'resize with it throughout')
        if exported is not None:
            trained = exported.align_corners
            if stated not in (None, trained):
                raise ValueError(f"--align-corners {str(stated).lower()}: '{exported.path}' says the model was "
                                 f'trained with align_corners {str(trained).lower()}')
            return None, trained, f"align_corners {trained} from '{exported.path}'"
        if stated is not None:
            return None, stated, f'align_corners {stated} as stated'
        if arch.head == OCR:
            return None, OFFICIAL_OCR_ALIGN_CORNERS, (f'align_corners {OFFICIAL_OCR_ALIGN_CORNERS}: every official '
                                                      'HRNet-OCR config (MODEL.ALIGN_CORNERS left at its default)')
        outputs = arch.num_outputs
        released = seg_dataset_for(outputs)
        if released is None:
            raise ValueError(f"'{src}' has {outputs} classes, no released HRNet segmentation model has that many: pass "
                             "--align-corners true|false as in its training config (MODEL.ALIGN_CORNERS; the official "
                             'code defaults to true, its Cityscapes, LIP and PASCAL-Context configs set false)')
        return None, released.align_corners, (f'align_corners {released.align_corners}: the official {released.name} '
                                               f'configs ({outputs} classes)')

    def settings_from_config(self, config: Mapping[str, Any], path: Path
                             ) -> tuple[tuple[int, int] | None, bool | None]:
        align_corners = config.get('align_corners')
        if not isinstance(align_corners, bool):
            raise ValueError(f"'{path}' has no valid 'align_corners' field (true or false): {align_corners!r}")
        return None, align_corners

    def create_model(self, checkpoint: Checkpoint, size: tuple[int, int] | None, align: bool | None,
                     exported: ModelConfig | None) -> HRNetSeg:
        model = create_seg_model(checkpoint, align_corners=align)
        if exported is not None and exported.labels is not None:
            model.dataset = exported.labels
        return model

    def complexity_size(self, model: HRNetSeg) -> tuple[int, int]:
        return SEG_MACS_SIZE

    def verify_size(self, size: tuple[int, int] | None) -> tuple[int, int]:
        return SEG_VERIFY_SIZE


POSE_KIND = PoseKind(POSE, code='pose_hrnet', create='create_pose_model', outputs_key='num_joints',
                     labels_key='keypoints', unit='joints', label_sets=KEYPOINT_SETS)
SEGMENTATION_KIND = SegmentationKind(SEGMENTATION, code='seg_hrnet', create='create_seg_model',
                                     outputs_key='num_classes', labels_key='dataset', unit='classes',
                                     label_sets=SEG_DATASETS)
TASK_KINDS: dict[str, TaskKind] = {POSE: POSE_KIND, SEGMENTATION: SEGMENTATION_KIND}
