"""Convert, verify, stage (and optionally push) every checkpoint of a manifest; one failure does not stop the rest.

A manifest is checked as a whole before anything is downloaded or written: an invalid entry (an unknown key or
model, a repo id such as ``ORG/`` or ``../x``, a malformed hash or number, two entries staging to one directory)
stops the run with one line naming the manifest and the entry. What can only fail while running (a download, a
hash, a conversion) fails that entry alone; the summary lists it.

Entries are classifiers unless they say ``task = "pose"`` or ``"segmentation"``; those take their architecture from
the checkpoint (no ``model``) and state the input size / align_corners and the published results instead of the
classifier's preprocessing and top-1 (``hub_upload.task_repos``).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from timm_hrnet.download import FetchedFile, check_sha256, hash_from_name, is_url, resolve_checkpoint

from .classifier import ClassifierOptions, Preprocessing
from .kinds import RepoOptions
from .model_card import CardFacts, TaskFacts
from .names import (
    CLASSIFICATION,
    CLASSIFIER_SOURCES,
    INTERPOLATIONS,
    TASK_ARCHITECTURES,
    TASK_LAYOUTS,
    TASK_METRICS,
    TASKS,
    WEIGHTS_NAME,
    validate_repo_id,
)
from .push import push_dir, read_weights_metadata
from .safety import is_staged_repo, recover_interrupted
from .source import read_source
from .stage import convert
from .task_repos import TaskOptions

__all__ = ['BatchOutcome', 'ManifestEntry', 'format_summary', 'load_manifest', 'run_batch']


@dataclass(frozen=True)
class ManifestEntry:
    """One checkpoint: where to get it, how to check it, which variant and repo it becomes, facts for its card."""

    url: str
    model: str
    repo_id: str
    sha256: str | None = None
    source: str = 'auto'
    source_title: str | None = None  # who published the file, e.g. 'OpenMMLab mmpretrain model zoo'
    source_name: str | None = None
    source_config: str | None = None
    converted_from: str | None = None
    license: str = 'mit'
    dataset: str | None = None  # None: imagenet-1k for a 1000-class classifier, else unstated
    num_classes: int | None = None
    top1: float | None = None
    top5: float | None = None
    params: int | None = None
    flops: int | None = None
    results_url: str | None = None
    description: str | None = None
    # the protocol the source evaluated with; what the entry leaves out comes from its source's pipeline or the
    # model's pretrained cfg (stage.default_preprocessing)
    input_size: tuple[int, int, int] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    test_input_size: tuple[int, int, int] | None = None
    test_crop_pct: float | None = None
    # pose and segmentation entries (model: hrnet_pose / hrnet_seg, set from the task)
    task: str = CLASSIFICATION
    align_corners: bool | None = None  # segmentation: the training config's MODEL.ALIGN_CORNERS
    metrics: tuple[tuple[str, float], ...] = ()  # published results in percent, e.g. (('AP', 74.4),)
    eval_split: str | None = None  # where they were measured, e.g. 'val2017'
    eval_protocol: str | None = None  # how, e.g. 'flip test'

    @property
    def file_name(self) -> str:
        return Path(urlparse(self.url).path).name

    @property
    def repo_name(self) -> str:
        """The repo's name, also the name of its directory under --out-root."""
        return self.repo_id.split('/')[-1]

    @property
    def expected_sha256(self) -> str | None:
        return check_sha256(self.sha256) if self.sha256 else hash_from_name(self.file_name)

    @property
    def display_name(self) -> str:
        if self.source_name:
            return self.source_name
        prefix = hash_from_name(self.file_name)
        stem = Path(self.file_name).stem
        if prefix:  # ..._20220120-0c10b180.pth -> ... (the release date and hash prefix say nothing to a reader)
            stem = re.sub(r'_\d{8}$', '', stem.removesuffix(f'-{prefix}'))
        return stem

    def card_facts(self) -> CardFacts:
        return CardFacts(
            source=self.source,
            source_title=self.source_title,
            source_name=self.display_name,
            source_url=self.url if urlparse(self.url).scheme in ('http', 'https') else None,
            source_config=self.source_config,
            converted_from=self.converted_from,
            license=self.license,
            dataset=self.dataset,
            top1=self.top1,
            top5=self.top5,
            source_params=self.params,
            source_flops=self.flops,
            results_url=self.results_url,
            description=self.description,
        )

    def task_facts(self) -> TaskFacts:
        return TaskFacts(
            source_title=self.source_title,
            source_name=self.display_name,
            source_url=self.url if urlparse(self.url).scheme in ('http', 'https') else None,
            source_config=self.source_config,
            license=self.license,
            dataset=self.dataset,
            metrics=self.metrics,
            eval_split=self.eval_split,
            eval_protocol=self.eval_protocol,
            results_url=self.results_url,
            description=self.description,
        )

    def preprocessing_overrides(self) -> dict[str, Any]:
        """The preprocessing this entry states (None: not stated)."""
        return dict(input_size=self.input_size, interpolation=self.interpolation, crop_pct=self.crop_pct,
                    test_input_size=self.test_input_size, test_crop_pct=self.test_crop_pct)

    def options(self) -> RepoOptions:
        """What the entry states, for ``stage.convert``: a classifier's or a task model's."""
        if self.task == CLASSIFICATION:
            return ClassifierOptions(self.model, self.source, self.card_facts(), self.preprocessing_overrides(),
                                     num_classes=self.num_classes)
        return TaskOptions(self.task, self.source, self.task_facts(),
                           input_size=self.input_size[1:] if self.input_size else None,
                           align_corners=self.align_corners, num_outputs=self.num_classes)


_ENTRY_KEYS = {f.name for f in fields(ManifestEntry)} | {'file', 'repo'}
_TOP_LEVEL_KEYS = {'url_base', 'repo_owner', 'defaults', 'checkpoints'}
_TEXT_KEYS = ('source_title', 'source_name', 'source_config', 'converted_from', 'license', 'dataset', 'results_url',
              'description', 'eval_split', 'eval_protocol')
# keys that describe only one kind of entry; on the other kind they are an error, not ignored
_CLASSIFIER_KEYS = ('model', 'converted_from', 'top1', 'top5', 'params', 'flops', 'interpolation', 'crop_pct',
                    'test_input_size', 'test_crop_pct')
_TASK_KEYS = ('align_corners', 'metrics', 'eval_split', 'eval_protocol')


def _check_keys(found: Any, allowed: set[str], where: str) -> None:
    if not isinstance(found, dict):
        raise ValueError(f'{where} must be a table of keys, got {type(found).__name__}')
    unknown = sorted(set(found) - allowed)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, 1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ''))
        raise ValueError(f"unknown key(s) in {where}: {', '.join(hints)}; allowed: {', '.join(sorted(allowed))}")


def _read_manifest_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding='utf-8')
    try:
        if path.suffix == '.toml':
            return tomllib.loads(text)
        if path.suffix in ('.yaml', '.yml'):
            return yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"'{path}' is not valid {path.suffix[1:].upper()}: {str(e).splitlines()[0]}") from e
    raise ValueError(f"manifest '{path}' must be .toml, .yaml or .yml")


def _number(value: Any, key: str, low: float, high: float, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not low <= value <= high:
        kind = 'an integer' if integer else 'a number'
        raise ValueError(f'{key} must be {kind} in [{low:g}, {high:g}], got {value!r}')


def _size(value: Any, key: str) -> tuple[int, int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f'{key} must be [channels, height, width] of positive integers, got {value!r}')
    return tuple(value)


def _task_values(values: dict[str, Any]) -> None:
    """Check a pose / segmentation entry in place: its own keys only, metrics as a tuple of (name, value)."""
    task = values['task']
    other = [key for key in _CLASSIFIER_KEYS if values.get(key) is not None]
    if task == 'segmentation' and values.get('input_size') is not None:
        other.append('input_size')
    if other:
        raise ValueError(f"{', '.join(other)} do(es) not apply to a {task} entry (its architecture comes from the "
                         'checkpoint; it states input_size (pose), align_corners (segmentation), metrics)')
    values['model'] = TASK_ARCHITECTURES[task]
    sources = ('auto', *TASK_LAYOUTS[task])
    if values.get('source', 'auto') not in sources:
        raise ValueError(f"source must be one of {', '.join(sources)} for a {task} entry, got {values['source']!r}")
    if values.get('align_corners') is not None:
        if task != 'segmentation' or not isinstance(values['align_corners'], bool):
            raise ValueError(f"align_corners must be true or false on a segmentation entry, got "
                             f"{values['align_corners']!r}")
    metrics = values.get('metrics') or {}
    if not isinstance(metrics, dict):
        raise ValueError(f'metrics must be a table of NAME = VALUE, got {metrics!r}')
    for name, value in metrics.items():
        if name not in TASK_METRICS[task]:
            raise ValueError(f"metrics: {name!r} is not a {task} metric; expected {', '.join(TASK_METRICS[task])}")
        _number(value, f'metrics.{name}', 0, 100)
    values['metrics'] = tuple(metrics.items())


def _validated(values: dict[str, Any]) -> ManifestEntry:
    """The entry, or a ValueError naming the first problem (the caller adds which entry of which manifest)."""
    values.setdefault('task', CLASSIFICATION)
    if values['task'] not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {values['task']!r}")
    if values['task'] != CLASSIFICATION:
        _task_values(values)
    else:
        given = [key for key in _TASK_KEYS if values.get(key) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} do(es) not apply to a classifier entry (task = \"pose\" or "
                             '"segmentation" for those)')
    missing = [key for key in ('url', 'model', 'repo_id') if not values.get(key)]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    validate_repo_id(values['repo_id'])
    if values['task'] == CLASSIFICATION:
        Preprocessing.for_model(values['model'])  # an unknown variant or tag
        if values.get('source', 'auto') not in CLASSIFIER_SOURCES:
            raise ValueError(f"source must be one of {', '.join(CLASSIFIER_SOURCES)}, got {values['source']!r}")
    for key in _TEXT_KEYS:
        if values.get(key) is not None and not isinstance(values[key], str):
            raise ValueError(f'{key} must be a string, got {values[key]!r}')
    for key in ('top1', 'top5'):
        if values.get(key) is not None:
            _number(values[key], key, 0, 100)
    for key in ('params', 'flops', 'num_classes'):
        if values.get(key) is not None:
            _number(values[key], key, 1, math.inf, integer=True)
    for key in ('crop_pct', 'test_crop_pct'):
        if values.get(key) is not None:
            _number(values[key], key, 1e-3, 1)
    for key in ('input_size', 'test_input_size'):
        if values.get(key) is not None:
            values[key] = _size(values[key], key)
    if values.get('interpolation') is not None and values['interpolation'] not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {values['interpolation']!r}")
    entry = ManifestEntry(**values)
    if entry.expected_sha256 is None and is_url(entry.url):  # a local file is the user's own; a download must be
        raise ValueError(f'has no sha256 and {entry.file_name!r} carries no hash prefix; add sha256 = "..."')
    return entry


def load_manifest(path: str | os.PathLike, repo_owner: str | None = None,
                  checkpoint_dir: str | os.PathLike | None = None) -> list[ManifestEntry]:
    """Parse and check a TOML or YAML manifest; entries inherit ``[defaults]``, relative paths resolve next to it.

    ``repo_owner`` replaces the manifest's owner of every repo (e.g. to publish under your own account);
    ``checkpoint_dir`` is where relative file paths resolve instead (the files a user downloaded by hand).
    """
    path = Path(path).resolve()
    raw = _read_manifest_file(path)
    _check_keys(raw, _TOP_LEVEL_KEYS, f"'{path}'")
    defaults = raw.get('defaults', {})
    _check_keys(defaults, _ENTRY_KEYS, f"'{path}' [defaults]")
    url_base, owner = raw.get('url_base'), repo_owner or raw.get('repo_owner')
    checkpoints = raw.get('checkpoints', [])
    if not isinstance(checkpoints, list) or not checkpoints:
        raise ValueError(f"'{path}' lists no [[checkpoints]]")
    entries: list[ManifestEntry] = []
    staged_as: dict[str, int] = {}
    for index, item in enumerate(checkpoints, start=1):
        where = f"'{path}' checkpoint #{index}"
        _check_keys(item, _ENTRY_KEYS, where)
        values = {**defaults, **item}
        if 'file' in values and 'url' not in values:
            values['url'] = urljoin(url_base, values['file']) if url_base else values['file']
        values.pop('file', None)
        repo = values.pop('repo', None)
        if 'repo_id' not in values and repo is not None:
            values['repo_id'] = repo if '/' in str(repo) or not owner else f'{owner}/{repo}'
        if repo_owner and values.get('repo_id'):
            values['repo_id'] = f"{repo_owner}/{str(values['repo_id']).split('/')[-1]}"
        if isinstance(values.get('url'), str) and urlparse(values['url']).scheme == '' \
                and not Path(values['url']).is_absolute():
            values['url'] = str(Path(checkpoint_dir or path.parent).resolve() / values['url'])
        try:
            entry = _validated(values)
        except (ValueError, TypeError, RuntimeError) as e:  # timm says RuntimeError for an unknown tag
            raise ValueError(f'{where}: {str(e).splitlines()[0]}') from e
        if entry.repo_name in staged_as:
            raise ValueError(f'{where}: repo name {entry.repo_name!r} is already used by checkpoint '
                             f'#{staged_as[entry.repo_name]}; each repo needs its own directory')
        staged_as[entry.repo_name] = index
        entries.append(entry)
    return entries


@dataclass(frozen=True)
class BatchOutcome:
    name: str
    model: str
    repo_id: str
    ok: bool
    detail: str


def _already_staged(out_dir: Path, source_sha256: str) -> bool:
    if not is_staged_repo(out_dir) or not (out_dir / WEIGHTS_NAME).is_file():
        return False
    return read_weights_metadata(out_dir / WEIGHTS_NAME).get('source_sha256') == source_sha256


def _require_full_hash(entry: ManifestEntry, fetched: FetchedFile) -> None:
    if fetched.verified != 'full':
        checked = (f'only the sha256 prefix {entry.expected_sha256} was checked' if entry.expected_sha256
                   else 'the manifest states no sha256')
        raise ValueError(f'{entry.file_name}: {checked}; publishing needs the full sha256: confirm {fetched.sha256} '
                         'with the source and add it to the manifest')


def _convert(entry: ManifestEntry, fetched: FetchedFile, out_dir: Path, options: dict[str, Any],
             log: Callable[[str], None]) -> str:
    """Stage one entry (classifier or task model), its file read once; the detail for the summary."""
    result = convert(read_source(fetched), out_dir, entry.options(), force=options['restage'], repo_id=entry.repo_id,
                     verify_image_size=options['verify_image_size'], log=lambda message: log(f'  {message}'))
    return result.report.brief()


def _process(entry: ManifestEntry, out_root: Path, cache_dir: Path, options: dict[str, Any],
             log: Callable[[str], None]) -> str:
    if not is_url(entry.url) and not Path(entry.url).is_file():
        raise FileNotFoundError(f"checkpoint file not found: '{entry.url}' (download {entry.file_name} there, or "
                                'pass --checkpoint-dir with the folder holding it)')
    fetched = resolve_checkpoint(entry.url, entry.expected_sha256, cache_dir, allow_http=options['allow_http'],
                                 require_hash=True, log=lambda message: log(f'  warning: {message}'))
    if options['push']:  # before staging: nothing is done for a source that could not be published
        _require_full_hash(entry, fetched)
    out_dir = out_root / entry.repo_name
    recover_interrupted(out_dir, lambda message: log(f'  {message}'))
    if not options['restage'] and _already_staged(out_dir, fetched.sha256):
        detail = 'already staged'
    else:
        detail = _convert(entry, fetched, out_dir, options, log)
    if options['push']:
        url = push_dir(out_dir, entry.repo_id, overwrite_weights=options['overwrite_weights'], log=log)
        detail += f', pushed {url}'
    return detail


def run_batch(
        manifest: str | os.PathLike,
        out_root: str | os.PathLike,
        cache_dir: str | os.PathLike,
        push: bool = False,
        restage: bool = False,
        overwrite_weights: bool = False,
        allow_http: bool = False,
        verify_image_size: int | None = None,
        repo_owner: str | None = None,
        log: Callable[[str], None] = print,
        checkpoint_dir: str | os.PathLike | None = None,
) -> list[BatchOutcome]:
    """Process every manifest entry; failures are recorded with their reason and the run goes on.

    ``restage`` replaces directories hub_upload staged before (never anything else); ``overwrite_weights`` lets
    ``push`` replace weights already on the Hub. They are separate decisions, so they are separate flags.
    ``checkpoint_dir`` is where the manifest's relative file paths are (default: next to the manifest).
    """
    entries = load_manifest(manifest, repo_owner=repo_owner, checkpoint_dir=checkpoint_dir)
    options = dict(push=push, restage=restage, overwrite_weights=overwrite_weights, allow_http=allow_http,
                   verify_image_size=verify_image_size)
    outcomes = []
    for index, entry in enumerate(entries, start=1):
        log(f'[{index}/{len(entries)}] {entry.display_name} -> {entry.model} ({entry.repo_id})')
        try:
            detail = _process(entry, Path(out_root), Path(cache_dir), options, log)
            outcomes.append(BatchOutcome(entry.display_name, entry.model, entry.repo_id, True, detail))
        except Exception as e:  # one bad source must not stop the others; the reason goes into the summary
            text = str(e).strip()
            reason = f'{type(e).__name__}: {text.splitlines()[0] if text else ""}'
            log(f'  failed: {reason}')
            outcomes.append(BatchOutcome(entry.display_name, entry.model, entry.repo_id, False, reason))
    return outcomes


def format_summary(outcomes: list[BatchOutcome]) -> str:
    rows = [('source', 'model', 'repo', 'status', 'detail')]
    rows += [(o.name, o.model, o.repo_id, 'ok' if o.ok else 'FAILED', o.detail) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ['  '.join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + '  ' + row[4] for row in rows]
    failed = sum(not o.ok for o in outcomes)
    lines.insert(1, '-' * len(lines[0]))
    lines.append(f'{len(outcomes) - failed} ok, {failed} failed')
    return '\n'.join(lines)
