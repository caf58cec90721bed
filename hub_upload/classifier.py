"""The classifier kind: a classification checkpoint becomes a timm repo (canonical weights, timm's config.json with
the source's evaluation preprocessing, a card); verification loads it with ``local-dir:`` and compares it with the
source run through independent code (``hub_upload.reference``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import timm_hrnet  # noqa: F401  (registers our hrnet_* models and their pretrained cfgs before any lookup)
from timm_hrnet.checkpoints import Checkpoint
from timm_hrnet.complexity import count_params_and_macs
from timm_hrnet.convert import (
    CheckpointMismatchError,
    convert_state_dict,
    detect_layout,
    mismatch_summary,
    resolve_layout,
)
from timm_hrnet.download import FetchedFile
from timm_hrnet.timm_compat import save_config_for_hf

from .kinds import Comparison, Prepared, RepoKind
from .model_card import IMAGENET_1K, CardFacts, Complexity, Verification, build_model_card
from .names import CLASSIFICATION, CLASSIFIER_SOURCES, WEIGHTS_NAME
from .reference import (
    Reference,
    ReferenceLoadError,
    build_reference,
    builtin_reference_for_weights,
    read_source_state_dict,
)
from .report import VerifyReport
from .source import Source

__all__ = ['CLASSIFIER', 'ClassifierKind', 'ClassifierOptions', 'Preprocessing', 'default_preprocessing']

# pretrained_cfg entries that describe the checkpoint timm ships, not the one being converted
_SOURCE_SPECIFIC_CFG = (
    'tag', 'url', 'hf_hub_id', 'hf_hub_filename', 'file', 'state_dict', 'source', 'test_input_size', 'test_crop_pct',
    'test_pool_size', 'origin_url', 'notes', 'description', 'license',
)


def _plain(value: Any) -> Any:
    """Lists (from TOML / JSON) as tuples, as timm's cfgs hold sizes and statistics."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing of the source, written to config.json's pretrained_cfg."""

    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_input_size: tuple[int, int, int] | None = None  # where the published accuracy was measured, if elsewhere
    test_crop_pct: float | None = None

    @classmethod
    def for_model(cls, model_name: str) -> Preprocessing:
        """The preprocessing registered for ``arch.tag`` (or the default tag of ``arch``)."""
        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None:
            close = difflib.get_close_matches(model_name, timm.list_pretrained('hrnet*'), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ''
            raise ValueError(f"unknown model '{model_name}' (no pretrained cfg registered){hint}")
        return cls(**{f.name: _plain(getattr(cfg, f.name)) for f in fields(cls)})

    def as_cfg(self) -> dict[str, Any]:
        """The pretrained_cfg entries, leaving out the test size and crop when the source gives none."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    def with_overrides(self, **overrides: Any) -> Preprocessing:
        """A copy with every override that is not None applied (unset CLI options and manifest keys are None).

        A size given as one number N means N x N with the source's channel count.
        """
        square = {'input_size', 'test_input_size'}
        return replace(self, **{
            key: (self.input_size[0], value, value) if key in square and isinstance(value, int) else _plain(value)
            for key, value in overrides.items() if value is not None
        })


# The evaluation pipelines of the sources' own code, for checkpoints whose layout (or declared source) names them:
# mmpretrain's configs/_base_/datasets/imagenet_bs32_pil_resize.py (ResizeEdge 256 short side, pillow, bilinear by
# default; CenterCrop 224) and HRNet-Image-Classification's tools/valid.py (Resize(224 / 0.875), torchvision's
# bilinear default; CenterCrop 224); both normalise with the ImageNet mean / std.
_SOURCE_PIPELINES = {
    'mmpretrain': ("mmpretrain's evaluation pipeline (ResizeEdge 256, CenterCrop 224, bilinear)",
                   Preprocessing((3, 224, 224), 'bilinear', 0.875, 'center', IMAGENET_DEFAULT_MEAN,
                                 IMAGENET_DEFAULT_STD)),
    'official': ("HRNet-Image-Classification's evaluation pipeline (Resize 256, CenterCrop 224, bilinear)",
                 Preprocessing((3, 224, 224), 'bilinear', 0.875, 'center', IMAGENET_DEFAULT_MEAN,
                               IMAGENET_DEFAULT_STD)),
}


def default_preprocessing(model_name: str, source: str) -> tuple[Preprocessing, str]:
    """The preprocessing a checkpoint is presumed to be evaluated with, and where that presumption comes from.

    An explicit tag (``hrnet_w18_ssld.paddle_in1k``) wins; else a source whose own pipeline is known (``mmpretrain``,
    declared or detected, and ``official``); else the pretrained cfg registered for the architecture's default tag.
    """
    architecture, tag = timm.models.split_model_name_tag(model_name)
    if not tag and source in _SOURCE_PIPELINES:
        origin, preprocessing = _SOURCE_PIPELINES[source]
        return preprocessing, origin
    preprocessing = Preprocessing.for_model(model_name)
    if tag:
        return preprocessing, f"timm_hrnet's pretrained cfg of {model_name}"
    default_tag = timm.models.get_pretrained_cfg(architecture).tag
    return preprocessing, (f"timm_hrnet's pretrained cfg of {architecture}.{default_tag} (the canonical layout does "
                           'not tell the official release from timm weights: --source official or a tag says which)')


@dataclass(frozen=True)
class ClassifierOptions:
    """What a caller states about a classifier: the variant (optionally with a tag), the layout, card facts,
    preprocessing overrides (None: not stated), the tolerance on logits and the class count it must have."""

    model_name: str
    source: str = 'auto'
    facts: CardFacts | None = None
    preprocessing_overrides: Mapping[str, Any] = field(default_factory=dict)
    atol: float = 1e-4
    num_classes: int | None = None

    def __post_init__(self) -> None:
        Preprocessing.for_model(self.model_name)  # an unknown architecture or tag fails before anything is read

    def kind_for(self, checkpoint: Checkpoint) -> RepoKind:
        return CLASSIFIER  # a task checkpoint is refused by the converter, naming what it is


def _resolve_dataset(facts: CardFacts, num_classes: int, expected_classes: int | None, src: Path) -> CardFacts:
    """State only what is known: a 1000-class classifier is ImageNet-1k, any other needs its dataset named."""
    if expected_classes is not None and expected_classes != num_classes:
        raise ValueError(f"'{src}' has a {num_classes}-class classifier, not the {expected_classes} classes stated")
    dataset = facts.dataset or (IMAGENET_1K if num_classes == 1000 else None)
    if dataset == IMAGENET_1K and num_classes != 1000:
        raise ValueError(f"'{src}' has a {num_classes}-class classifier, so it was not trained on {IMAGENET_1K}; "
                         'state the dataset it was fine-tuned on (--dataset)')
    return replace(facts, dataset=dataset)


def _require_fields(config: dict, path: Path) -> None:
    """A config.json that timm could not build from is named with the field it lacks, instead of a bare KeyError."""
    if not isinstance(config.get('architecture'), str):
        raise ValueError(f"'{path}' has no 'architecture' field; it is not a timm config.json")
    if 'input_size' not in (config.get('pretrained_cfg') or {}):
        raise ValueError(f"'{path}' has no 'pretrained_cfg.input_size' field; it is not a timm config.json")


def _own_weights_reference(repo_dir: Path, architecture: str) -> Reference:
    weights = safetensors.torch.load_file(repo_dir / WEIGHTS_NAME)
    reference = builtin_reference_for_weights(weights, architecture)
    if reference is None:
        raise ValueError(f'timm has no built-in {architecture} to check {repo_dir} against; pass --against SOURCE')
    return reference


class ClassifierKind:
    """Classification checkpoints (canonical or mmpretrain layout) as timm repos."""

    name = CLASSIFICATION
    description = 'a classifier'
    tolerance = 'atol'
    sources = CLASSIFIER_SOURCES

    def prepare(self, source: Source, options: ClassifierOptions, repo_id: str,
                log: Callable[[str], None]) -> Prepared:
        checkpoint, src = source.checkpoint, source.path
        architecture = timm.models.split_model_name_tag(options.model_name)[0]
        try:
            state_dict = convert_state_dict(checkpoint, architecture, layout=options.source)
        except CheckpointMismatchError as e:  # one line with the likely cause, not every key
            raise ValueError(mismatch_summary(e, checkpoint, options.source, source=checkpoint.source)) from e
        layout = checkpoint.layout.name
        head = timm.models.get_pretrained_cfg_value(architecture, 'classifier') or 'classifier'
        classes = state_dict[f'{head}.weight'].shape[0]
        facts = _resolve_dataset(options.facts or CardFacts(), classes, options.num_classes, src)
        if facts.source == 'auto':
            facts = replace(facts, source=layout)
        preprocessing, origin = default_preprocessing(options.model_name,
                                                      options.source if options.source != 'auto' else layout)
        preprocessing = preprocessing.with_overrides(**options.preprocessing_overrides)

        with torch.device('meta'):  # skips random init: the converted tensors are assigned
            model = timm.create_model(architecture, pretrained=False, num_classes=classes)
        model.load_state_dict(state_dict, assign=True)
        pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in _SOURCE_SPECIFIC_CFG}
        if tuple(preprocessing.input_size) != tuple(pretrained_cfg['input_size']):
            pretrained_cfg.pop('pool_size', None)  # the registered pool size belongs to the registered input size
        pretrained_cfg.update(preprocessing.as_cfg(), num_classes=classes, license=facts.license)
        if facts.source_url:
            pretrained_cfg['origin_url'] = facts.source_url
        model.pretrained_cfg = model.default_cfg = pretrained_cfg

        def card(report: VerifyReport):
            params, macs = count_params_and_macs(architecture, tuple(pretrained_cfg['input_size']),
                                                 num_classes=classes)
            return build_model_card(
                repo_id=repo_id,
                architecture=architecture,
                pretrained_cfg=pretrained_cfg,
                complexity=Complexity(params=params, macs=macs, input_size=pretrained_cfg['input_size']),
                facts=facts,
                source_file=src.name,
                source_sha256=source.fetched.sha256,
                verification=Verification(report.reference, report.independent, report.max_abs_diff),
            )

        return Prepared(
            architecture=architecture, num_outputs=classes, state_dict=state_dict, layout=layout,
            write_config=lambda path: save_config_for_hf(model, str(path)), card=card, origin=origin,
            converted_with='timm_hrnet.convert', verify_options=dict(source=layout, atol=options.atol),
        )

    def comparison(self, repo_dir: Path, config: dict[str, Any], against: FetchedFile | None,
                   source: str) -> Comparison:
        """``local-dir:`` as users load it; the source through timm's built-in HRNet or mmpretrain where they can
        run it (else the converter: self-consistency only), the repo's own weights through timm's without one."""
        _require_fields(config, repo_dir / 'config.json')
        architecture = config['architecture']
        if against is None:
            reference = _own_weights_reference(repo_dir, architecture)
        else:
            state_dict = read_source_state_dict(against.path)
            layout = detect_layout(state_dict) if source == 'auto' else resolve_layout(source)
            try:
                reference = build_reference(state_dict, architecture, layout)
            except ReferenceLoadError as e:
                return Comparison(None, None, 'an independent reference', True, (0, 0, 0), failure=str(e))
        loaded = timm.create_model(f'local-dir:{repo_dir}', pretrained=True).eval()
        return Comparison(loaded, reference.model, reference.description, reference.independent,
                          tuple(config['pretrained_cfg']['input_size']))


CLASSIFIER = ClassifierKind()
