"""Convert one source checkpoint into a Hugging Face repo directory, verified before it appears at its destination."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import safetensors.torch
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._hub import save_config_for_hf

from timm_hrnet.convert import convert_state_dict, detect_layout, load_checkpoint_file, resolve_layout

from .model_card import PAPER_TITLE, CardFacts, build_model_card, measure_complexity
from .verify import WEIGHTS_NAME, VerifyReport, file_sha256, verify_dir

__all__ = ['Preprocessing', 'StageResult', 'VerificationError', 'convert_to_dir']

# pretrained_cfg entries that describe the checkpoint timm ships, not the one being converted
_SOURCE_SPECIFIC_CFG = (
    'tag', 'url', 'hf_hub_id', 'hf_hub_filename', 'file', 'state_dict', 'source', 'test_input_size', 'test_crop_pct',
    'test_pool_size', 'origin_url', 'paper_ids', 'paper_name', 'notes', 'description', 'license',
)


class VerificationError(RuntimeError):
    """The staged repo does not reproduce its source; nothing was moved into place."""


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing of the source, written to config.json's pretrained_cfg."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = 'bilinear'
    crop_pct: float = 0.875
    crop_mode: str = 'center'
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD


@dataclass(frozen=True)
class StageResult:
    out_dir: Path
    architecture: str
    num_classes: int
    source_sha256: str
    report: VerifyReport
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


def _move_into_place(staging: Path, out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        staging.replace(out_dir)
        return
    if not force:
        raise FileExistsError(f"'{out_dir}' already exists; pass --force to replace it")
    displaced = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', suffix='.replaced', dir=out_dir.parent))
    out_dir.replace(displaced / out_dir.name)
    staging.replace(out_dir)
    shutil.rmtree(displaced)


def convert_to_dir(
        src: str | os.PathLike,
        model_name: str,
        out_dir: str | os.PathLike,
        source: str = 'auto',
        force: bool = False,
        repo_id: str | None = None,
        facts: CardFacts | None = None,
        preprocessing: Preprocessing = Preprocessing(),
        atol: float = 1e-4,
        verify_image_size: int | None = None,
) -> StageResult:
    """Write model.safetensors, config.json and README.md for ``src`` into ``out_dir``.

    Everything is written to a staging directory next to ``out_dir`` and verified there; only a verified repo is
    moved into place, so a failure never leaves a half-written or unverified directory behind.
    """
    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists() and not force:
        raise FileExistsError(f"'{out_dir}' already exists; pass --force to replace it")
    raw = load_checkpoint_file(src)
    layout = detect_layout(raw) if source == 'auto' else resolve_layout(source)
    state_dict = convert_state_dict(raw, model_name, layout=layout)
    classifier = timm.models.get_pretrained_cfg_value(model_name, 'classifier') or 'classifier'
    num_classes = state_dict[f'{classifier}.weight'].shape[0]
    facts = facts or CardFacts()
    if facts.source == 'auto':
        facts = replace(facts, source=layout)
    repo_id = repo_id or f'YOUR_ORG/{out_dir.name}'  # push warns when the card names another repo
    source_sha256 = file_sha256(src)

    with torch.device('meta'):  # skips random init: the converted tensors are assigned
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    model.load_state_dict(state_dict, assign=True)
    pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in _SOURCE_SPECIFIC_CFG}
    pretrained_cfg.update(
        input_size=preprocessing.input_size,
        interpolation=preprocessing.interpolation,
        crop_pct=preprocessing.crop_pct,
        crop_mode=preprocessing.crop_mode,
        mean=tuple(preprocessing.mean),
        std=tuple(preprocessing.std),
        num_classes=num_classes,
        license=facts.license,
        paper_ids='arXiv:1908.07919',
        paper_name=PAPER_TITLE,
    )
    if facts.source_url:
        pretrained_cfg['origin_url'] = facts.source_url
    model.pretrained_cfg = model.default_cfg = pretrained_cfg
    complexity = measure_complexity(model_name, preprocessing.input_size, num_classes=num_classes)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', suffix='.staging', dir=out_dir.parent))
    try:
        safetensors.torch.save_file(state_dict, staging / WEIGHTS_NAME, metadata={
            'format': 'pt',
            'architecture': model_name,
            'source_file': src.name,
            'source_sha256': source_sha256,
            'source_layout': layout,
            'converted_with': f'timm_hrnet.convert ({_version()})',
        })
        save_config_for_hf(model, str(staging / 'config.json'))
        card = build_model_card(
            repo_id=repo_id,
            architecture=model_name,
            pretrained_cfg=pretrained_cfg,
            complexity=complexity,
            facts=facts,
            source_file=src.name,
            source_sha256=source_sha256,
        )
        card.save(staging / 'README.md')
        report = verify_dir(staging, against=src, source=layout, atol=atol, image_size=verify_image_size)
        if not report.ok:
            raise VerificationError(f'{report.summary()}\nnothing was written to {out_dir}')
        _apply_umask(staging)
        files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
        _move_into_place(staging, out_dir, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return StageResult(
        out_dir=out_dir,
        architecture=model_name,
        num_classes=num_classes,
        source_sha256=source_sha256,
        report=replace(report, repo_dir=out_dir),
        files=files,
    )
