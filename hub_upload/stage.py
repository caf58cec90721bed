"""Convert one source checkpoint into a Hugging Face repo directory, verified before it appears at its destination.

One path for every kind of repo (``hub_upload.kinds``): lock the target, recover what a killed run left, check the
target, read the source once, let the kind prepare the repo, then write model.safetensors and config.json into a
staging directory next to the target, verify it there (``verify.verify_dir``, which reads the source again by its
own path), write the card and hub_upload's marker, and move it into place. Any failure, a full disk included, ends
in one line and leaves the target as it was.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch

from timm_hrnet.download import FetchedFile

from .classifier import ClassifierOptions, Preprocessing, default_preprocessing
from .kinds import Prepared, RepoOptions
from .lock import target_lock
from .model_card import CardFacts
from .names import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from .report import VerifyReport
from .safety import MARKER_NAME, check_target, make_staging_dir, recover_interrupted, replace_dir, write_marker
from .source import Source, fetched_file, read_source
from .verify import verify_dir

__all__ = ['Preprocessing', 'StageResult', 'VerificationError', 'convert', 'convert_to_dir', 'default_preprocessing',
           'stderr_log', 'weights_metadata']


class VerificationError(RuntimeError):
    """The staged repo does not reproduce its source; nothing was moved into place."""


@dataclass(frozen=True)
class StageResult:
    out_dir: Path
    architecture: str  # task repos: hrnet_pose / hrnet_seg
    num_classes: int  # pose: joints
    source_sha256: str
    report: VerifyReport
    preprocessing_origin: str  # where config.json's preprocessing (task repos: input size / align_corners) comes from
    files: dict[str, int] = field(default_factory=dict)  # name -> size in bytes


def _version() -> str:
    try:
        return metadata.version('timm-hrnet')
    except metadata.PackageNotFoundError:
        return 'source checkout'


def stderr_log(message: str) -> None:
    """The default log: progress and warnings go to stderr, results to stdout."""
    print(message, file=sys.stderr)


def _apply_umask(directory: Path) -> None:
    """mkdtemp and safetensors create private (0700 / 0600) entries; a published repo gets the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _write(path: Path, out_dir: Path, write: Callable[[], None]) -> None:
    """A failed write (a full disk) named by file, in one line; the caller removes the staging directory.

    safetensors reports its own I/O errors as SafetensorError, not OSError: they are named the same way.
    """
    try:
        write()
    except OSError as e:
        raise OSError(f"cannot write '{path}': {e.strerror or e}; nothing was written to '{out_dir}'") from e
    except safetensors.SafetensorError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(f"cannot write '{path}': {reason}; nothing was written to '{out_dir}'") from e


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


def _staging_dir(out_dir: Path) -> Path:
    try:
        return make_staging_dir(out_dir)
    except OSError as e:
        raise OSError(f"cannot create a staging directory next to '{out_dir}': {e.strerror or e}; nothing was "
                      f"written to '{out_dir}'") from e


def _stage(prepared: Prepared, fetched: FetchedFile, out_dir: Path, force: bool,
           verify_image_size: int | None) -> tuple[VerifyReport, dict[str, int]]:
    """Write, verify, mark and move into place; on any failure the staging directory goes and ``out_dir`` stays.

    ``out_dir`` is checked again just before the move: what the lock does not cover (a user's hand) may have
    changed it while converting.
    """
    staging = _staging_dir(out_dir)
    weights, config, card_path = staging / WEIGHTS_NAME, staging / CONFIG_NAME, staging / CARD_NAME
    recorded = {'version': _version(), 'architecture': prepared.architecture, **prepared.recorded,
                'source_file': fetched.path.name, 'source_sha256': fetched.sha256}
    try:
        metadata = weights_metadata(fetched, prepared.architecture, prepared.layout, prepared.converted_with,
                                    **prepared.recorded)
        _write(weights, out_dir, lambda: safetensors.torch.save_file(prepared.state_dict, weights, metadata=metadata))
        _write(config, out_dir, lambda: prepared.write_config(config))
        report = verify_dir(staging, against=fetched, image_size=verify_image_size, **prepared.verify_options)
        if not report.ok:
            raise VerificationError(f"nothing was written to '{out_dir}': {report.summary()}")
        card = prepared.card(report)
        _write(card_path, out_dir, lambda: card.save(card_path))
        _apply_umask(staging)
        files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
        _write(staging / MARKER_NAME, out_dir, lambda: write_marker(staging, recorded))
        check_target(out_dir, force, sources=[fetched.path])
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace(report, repo_dir=out_dir), files


def convert(
        src: Source | FetchedFile | str | os.PathLike,
        out_dir: str | os.PathLike,
        options: RepoOptions,
        force: bool = False,
        repo_id: str | None = None,
        verify_image_size: int | None = None,
        log: Callable[[str], None] = stderr_log,
) -> StageResult:
    """Write model.safetensors, config.json, README.md and the hub_upload marker for ``src`` into ``out_dir``.

    ``src`` is a local checkpoint, one already fetched and hashed (a `FetchedFile`), or one already read (a
    `Source`: it is not read again). ``options`` (``classifier.ClassifierOptions`` / ``task_repos.TaskOptions``)
    says what the caller states and which kind of repo the checkpoint becomes. Everything is written to a staging
    directory next to ``out_dir`` and verified there; only a verified repo is moved into place. An existing
    ``out_dir`` is replaced only with ``force`` and only when hub_upload staged it and it is unchanged
    (``hub_upload.safety.check_target``); the source is never touched; a second run on the same ``out_dir`` fails
    while this one holds its lock (``hub_upload.lock``).
    """
    fetched, out_dir = fetched_file(src), Path(out_dir)
    repo_id = repo_id or f'YOUR_ORG/{out_dir.name}'  # push warns when the card names another repo
    with target_lock(out_dir, log):
        recover_interrupted(out_dir, log)
        check_target(out_dir, force, sources=[fetched.path])
        source = read_source(src if isinstance(src, Source) else fetched)
        kind = options.kind_for(source.checkpoint)
        prepared = kind.prepare(source, options, repo_id, log)
        report, files = _stage(prepared, fetched, out_dir, force, verify_image_size)
    return StageResult(out_dir=out_dir, architecture=prepared.architecture, num_classes=prepared.num_outputs,
                       source_sha256=fetched.sha256, report=report, preprocessing_origin=prepared.origin, files=files)


def convert_to_dir(
        src: Source | FetchedFile | str | os.PathLike,
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
        log: Callable[[str], None] = stderr_log,
) -> StageResult:
    """`convert` of a classifier: ``model_name`` is an architecture, optionally with a pretrained tag (see
    ``classifier.ClassifierOptions``)."""
    options = ClassifierOptions(model_name, source, facts, dict(preprocessing_overrides or {}), atol, num_classes)
    return convert(src, out_dir, options, force=force, repo_id=repo_id, verify_image_size=verify_image_size, log=log)
