"""Convert one source checkpoint into a Hugging Face repo directory, verified before it appears at its destination."""

from __future__ import annotations

import difflib
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import safetensors.torch
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import timm_hrnet  # noqa: F401  (registers our hrnet_* models and their pretrained cfgs before any lookup)
from timm_hrnet.convert import (
    CheckpointMismatchError,
    convert_state_dict,
    detect_layout,
    load_checkpoint_file,
    resolve_layout,
)
from timm_hrnet.download import FetchedFile, resolve_checkpoint
from timm_hrnet.timm_compat import save_config_for_hf
from timm_hrnet.tools.cli_common import mismatch_summary
from timm_hrnet.tools.model_table import count_params_and_macs

from .model_card import IMAGENET_1K, CardFacts, Complexity, Verification, build_model_card
from .safety import MARKER_NAME, check_target, make_staging_dir, recover_interrupted, replace_dir, write_marker
from .verify import WEIGHTS_NAME, VerifyReport, verify_dir

if TYPE_CHECKING:
    from .tasks import TaskVerifyReport

__all__ = ['Preprocessing', 'StageResult', 'VerificationError', 'convert_to_dir', 'default_preprocessing', 'stage_repo',
           'weights_metadata']

T = TypeVar('T')

# pretrained_cfg entries that describe the checkpoint timm ships, not the one being converted
_SOURCE_SPECIFIC_CFG = (
    'tag', 'url', 'hf_hub_id', 'hf_hub_filename', 'file', 'state_dict', 'source', 'test_input_size', 'test_crop_pct',
    'test_pool_size', 'origin_url', 'notes', 'description', 'license',
)


class VerificationError(RuntimeError):
    """The staged repo does not reproduce its source; nothing was moved into place."""


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
class StageResult:
    out_dir: Path
    architecture: str  # task repos: hrnet_pose / hrnet_seg
    num_classes: int  # pose: joints
    source_sha256: str
    report: VerifyReport | TaskVerifyReport
    preprocessing_origin: str  # where config.json's preprocessing (task repos: input size / align_corners) comes from
    files: dict[str, int] = field(default_factory=dict)  # name -> size in bytes


def _version() -> str:
    try:
        return metadata.version('timm-hrnet')
    except metadata.PackageNotFoundError:
        return 'source checkout'


def _apply_umask(directory: Path) -> None:
    """mkdtemp and safetensors create private (0700 / 0600) entries; a published repo gets the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _read_and_convert(src: Path, architecture: str, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """The canonical state dict and the layout; a mismatch becomes one line with the likely cause."""
    raw = load_checkpoint_file(src)
    layout = detect_layout(raw) if source == 'auto' else resolve_layout(source)
    try:
        return convert_state_dict(raw, architecture, layout=layout), layout
    except CheckpointMismatchError as e:
        raise ValueError(mismatch_summary(e, raw, layout, source=f"'{src}'")) from e


def _resolve_dataset(facts: CardFacts, num_classes: int, expected_classes: int | None, src: Path) -> CardFacts:
    """State only what is known: a 1000-class classifier is ImageNet-1k, any other needs its dataset named."""
    if expected_classes is not None and expected_classes != num_classes:
        raise ValueError(f"'{src}' has a {num_classes}-class classifier, not the {expected_classes} classes stated")
    dataset = facts.dataset or (IMAGENET_1K if num_classes == 1000 else None)
    if dataset == IMAGENET_1K and num_classes != 1000:
        raise ValueError(f"'{src}' has a {num_classes}-class classifier, so it was not trained on {IMAGENET_1K}; "
                         'state the dataset it was fine-tuned on (--dataset)')
    return replace(facts, dataset=dataset)


def _write(path: Path, out_dir: Path, write: Callable[[], None]) -> None:
    """A failed write (a full disk) named by file; the caller removes the staging directory."""
    try:
        write()
    except OSError as e:
        raise OSError(f"cannot write '{path}': {e.strerror or e}; nothing was written to '{out_dir}'") from e


def weights_metadata(fetched: FetchedFile, architecture: str, layout: str, converted_with: str = 'timm_hrnet.convert',
                     **extra: str) -> dict[str, str]:
    """model.safetensors' metadata: what the weights are and the source they were converted from, by sha256."""
    return {
        'format': 'pt',
        'architecture': architecture,
        **extra,
        'source_file': fetched.path.name,
        'source_sha256': fetched.sha256,
        'source_sha256_check': fetched.verified,
        **({'source_url': fetched.url} if fetched.url else {}),
        'source_layout': layout,
        'converted_with': f'{converted_with} ({_version()})',
    }


def stage_repo(out_dir: Path, force: bool, src: Path, fill: Callable[[Path], T],
               marker: dict[str, Any]) -> tuple[T, dict[str, int]]:
    """Fill a staging directory next to ``out_dir`` (``fill`` writes and verifies the files), mark it as hub_upload's
    and move it into place; on any failure the staging directory goes and ``out_dir`` stays as it was.

    ``out_dir`` is checked again just before the move: it may have changed while converting.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(out_dir)
    try:
        result = fill(staging)
        _apply_umask(staging)
        files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
        _write(staging / MARKER_NAME, out_dir, lambda: write_marker(staging, marker))
        check_target(out_dir, force, sources=[src])
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result, files


def convert_to_dir(
        src: FetchedFile | str | os.PathLike,
        model_name: str,
        out_dir: str | os.PathLike,
        source: str = 'auto',
        force: bool = False,
        repo_id: str | None = None,
        facts: CardFacts | None = None,
        preprocessing_overrides: Mapping[str, Any] | None = None,
        atol: float = 1e-4,
        verify_image_size: int | None = None,
        num_classes: int | None = None,
        log: Callable[[str], None] = _stderr,
) -> StageResult:
    """Write model.safetensors, config.json, README.md and the hub_upload marker for ``src`` into ``out_dir``.

    ``src`` is a local checkpoint (or one already fetched and hashed, a `FetchedFile`). ``model_name`` is an
    architecture, optionally with a pretrained tag; the preprocessing defaults to ``default_preprocessing`` and each
    entry of ``preprocessing_overrides`` that is not None replaces its field. ``num_classes``, when given, must be the
    checkpoint's class count. Everything is written to a staging directory next to ``out_dir`` and verified there;
    only a verified repo is moved into place. An existing ``out_dir`` is replaced only with ``force`` and only when
    hub_upload staged it and it is unchanged (``hub_upload.safety.check_target``); the source is never touched.
    """
    Preprocessing.for_model(model_name)  # an unknown architecture or tag fails before anything is read
    fetched = src if isinstance(src, FetchedFile) else resolve_checkpoint(src)
    src, out_dir = fetched.path, Path(out_dir)
    recover_interrupted(out_dir, log)
    check_target(out_dir, force, sources=[src])
    architecture = timm.models.split_model_name_tag(model_name)[0]
    state_dict, layout = _read_and_convert(src, architecture, source)
    classifier = timm.models.get_pretrained_cfg_value(architecture, 'classifier') or 'classifier'
    classes = state_dict[f'{classifier}.weight'].shape[0]
    facts = _resolve_dataset(facts or CardFacts(), classes, num_classes, src)
    if facts.source == 'auto':
        facts = replace(facts, source=layout)
    preprocessing, origin = default_preprocessing(model_name, source if source != 'auto' else layout)
    preprocessing = preprocessing.with_overrides(**(preprocessing_overrides or {}))
    repo_id = repo_id or f'YOUR_ORG/{out_dir.name}'  # push warns when the card names another repo

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

    def fill(staging: Path) -> VerifyReport:
        _write(staging / WEIGHTS_NAME, out_dir, lambda: safetensors.torch.save_file(
            state_dict, staging / WEIGHTS_NAME, metadata=weights_metadata(fetched, architecture, layout)))
        _write(staging / 'config.json', out_dir, lambda: save_config_for_hf(model, str(staging / 'config.json')))
        report = verify_dir(staging, against=fetched, source=layout, atol=atol, image_size=verify_image_size)
        if not report.ok:
            raise VerificationError(f"nothing was written to '{out_dir}': {report.summary()}")
        params, macs = count_params_and_macs(architecture, tuple(pretrained_cfg['input_size']), num_classes=classes)
        card = build_model_card(
            repo_id=repo_id,
            architecture=architecture,
            pretrained_cfg=pretrained_cfg,
            complexity=Complexity(params=params, macs=macs, input_size=pretrained_cfg['input_size']),
            facts=facts,
            source_file=src.name,
            source_sha256=fetched.sha256,
            verification=Verification(report.reference, report.independent, report.max_abs_diff),
        )
        _write(staging / 'README.md', out_dir, lambda: card.save(staging / 'README.md'))
        return report

    report, files = stage_repo(out_dir, force, src, fill, {
        'version': _version(), 'architecture': architecture, 'source_file': src.name, 'source_sha256': fetched.sha256})
    return StageResult(
        out_dir=out_dir,
        architecture=architecture,
        num_classes=classes,
        source_sha256=fetched.sha256,
        report=replace(report, repo_dir=out_dir),
        preprocessing_origin=origin,
        files=files,
    )
