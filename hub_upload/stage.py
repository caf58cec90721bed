"""Convert one source checkpoint into a Hugging Face repo directory, verified before it appears at its destination."""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.models._hub import save_config_for_hf

import timm_hrnet  # noqa: F401  (registers our hrnet_* models and their pretrained cfgs before any lookup)
from timm_hrnet.convert import convert_state_dict, detect_layout, load_checkpoint_file, resolve_layout
from timm_hrnet.model_table import count_params_and_macs

from .model_card import CardFacts, Complexity, build_model_card
from .verify import WEIGHTS_NAME, VerifyReport, file_sha256, verify_dir

__all__ = ['Preprocessing', 'StageResult', 'VerificationError', 'convert_to_dir']

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
        """The preprocessing registered for ``arch.tag`` (or the default tag of ``arch``), so that e.g. the SSLD
        weights keep their crop_pct 0.95 and 288 test size unless told otherwise."""
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
        """A copy with every override that is not None applied (unset CLI options and manifest keys are None)."""
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})


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
        preprocessing: Preprocessing | None = None,
        atol: float = 1e-4,
        verify_image_size: int | None = None,
        source_sha256: str | None = None,
) -> StageResult:
    """Write model.safetensors, config.json and README.md for ``src`` into ``out_dir``.

    ``model_name`` is an architecture, optionally with a pretrained tag (``hrnet_w18_ssld.paddle_in1k``) whose
    registered preprocessing is the default for ``preprocessing``. ``source_sha256`` spares hashing ``src`` again
    when the caller already has it. Everything is written to a staging directory next to ``out_dir`` and verified
    there; only a verified repo is moved into place, so a failure never leaves a half-written or unverified directory.
    """
    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists() and not force:
        raise FileExistsError(f"'{out_dir}' already exists; pass --force to replace it")
    architecture = timm.models.split_model_name_tag(model_name)[0]
    raw = load_checkpoint_file(src)
    layout = detect_layout(raw) if source == 'auto' else resolve_layout(source)
    state_dict = convert_state_dict(raw, architecture, layout=layout)
    preprocessing = preprocessing or Preprocessing.for_model(model_name)
    classifier = timm.models.get_pretrained_cfg_value(architecture, 'classifier') or 'classifier'
    num_classes = state_dict[f'{classifier}.weight'].shape[0]
    facts = facts or CardFacts()
    if facts.source == 'auto':
        facts = replace(facts, source=layout)
    repo_id = repo_id or f'YOUR_ORG/{out_dir.name}'  # push warns when the card names another repo
    source_sha256 = source_sha256 or file_sha256(src)

    with torch.device('meta'):  # skips random init: the converted tensors are assigned
        model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    model.load_state_dict(state_dict, assign=True)
    pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in _SOURCE_SPECIFIC_CFG}
    if tuple(preprocessing.input_size) != tuple(pretrained_cfg['input_size']):
        pretrained_cfg.pop('pool_size', None)  # the registered pool size belongs to the registered input size
    pretrained_cfg.update(preprocessing.as_cfg(), num_classes=num_classes, license=facts.license)
    if facts.source_url:
        pretrained_cfg['origin_url'] = facts.source_url
    model.pretrained_cfg = model.default_cfg = pretrained_cfg
    params, macs = count_params_and_macs(architecture, pretrained_cfg['input_size'], num_classes=num_classes)
    complexity = Complexity(params=params, macs=macs, input_size=pretrained_cfg['input_size'])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', suffix='.staging', dir=out_dir.parent))
    try:
        safetensors.torch.save_file(state_dict, staging / WEIGHTS_NAME, metadata={
            'format': 'pt',
            'architecture': architecture,
            'source_file': src.name,
            'source_sha256': source_sha256,
            'source_layout': layout,
            'converted_with': f'timm_hrnet.convert ({_version()})',
        })
        save_config_for_hf(model, str(staging / 'config.json'))
        card = build_model_card(
            repo_id=repo_id,
            architecture=architecture,
            pretrained_cfg=pretrained_cfg,
            complexity=complexity,
            facts=facts,
            source_file=src.name,
            source_sha256=source_sha256,
        )
        card.save(staging / 'README.md')
        report = verify_dir(staging, against=src, source=layout, atol=atol, image_size=verify_image_size,
                            against_sha256=source_sha256)
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
        architecture=architecture,
        num_classes=num_classes,
        source_sha256=source_sha256,
        report=replace(report, repo_dir=out_dir),
        files=files,
    )
