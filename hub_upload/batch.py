"""Convert, verify, stage (and optionally push) every checkpoint of a manifest; one failure does not stop the rest."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any
from urllib.error import HTTPError
from urllib.parse import urljoin, urlparse
from urllib.request import Request, url2pathname, urlopen

import yaml
from tqdm import tqdm

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .model_card import CardFacts
from .push import push_dir
from .stage import Preprocessing, convert_to_dir
from .verify import WEIGHTS_NAME, file_sha256, read_weights_metadata

__all__ = [
    'HashMismatchError',
    'ManifestEntry',
    'BatchOutcome',
    'load_manifest',
    'fetch',
    'run_batch',
    'format_summary',
]

# release files name their sha256 prefix like torch.hub does: ..._20220120-0c10b180.pth
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.[A-Za-z0-9]+$')
_DATE_AND_HASH = re.compile(r'_\d{8}-[0-9a-f]{8,64}\.[A-Za-z0-9]+$')
_CHUNK = 1 << 20


class HashMismatchError(ValueError):
    """A downloaded file does not have the sha256 the manifest (or its file name) promises."""


@dataclass(frozen=True)
class ManifestEntry:
    """One checkpoint: where to get it, how to check it, which variant and repo it becomes, facts for its card."""

    url: str
    model: str
    repo_id: str
    sha256: str | None = None
    source: str = 'auto'
    source_name: str | None = None
    source_config: str | None = None
    converted_from: str | None = None
    license: str = 'mit'
    dataset: str = 'imagenet-1k'
    top1: float | None = None
    top5: float | None = None
    params: int | None = None
    flops: int | None = None
    results_url: str | None = None
    description: str | None = None
    # preprocessing the source was evaluated with; what the manifest leaves out comes from the model's pretrained cfg
    input_size: tuple[int, int, int] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None

    @property
    def file_name(self) -> str:
        return Path(urlparse(self.url).path).name

    @property
    def expected_sha256(self) -> str | None:
        if self.sha256:
            return self.sha256.lower()
        match = _HASH_IN_NAME.search(self.file_name)
        return match.group(1) if match else None

    @property
    def display_name(self) -> str:
        return self.source_name or _DATE_AND_HASH.sub('', self.file_name)

    def card_facts(self) -> CardFacts:
        return CardFacts(
            source=self.source,
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

    def preprocessing(self) -> Preprocessing:
        return Preprocessing.for_model(self.model).with_overrides(
            input_size=tuple(self.input_size) if self.input_size else None,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
        )


_ENTRY_KEYS = {f.name for f in fields(ManifestEntry)} | {'file', 'repo'}
_TOP_LEVEL_KEYS = {'url_base', 'repo_owner', 'defaults', 'checkpoints'}


def _check_keys(found: Any, allowed: set[str], where: str) -> None:
    unknown = sorted(set(found) - allowed)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, 1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ''))
        raise ValueError(f"unknown key(s) in {where}: {', '.join(hints)}; allowed: {', '.join(sorted(allowed))}")


def _read_manifest_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding='utf-8')
    if path.suffix == '.toml':
        return tomllib.loads(text)
    if path.suffix in ('.yaml', '.yml'):
        return yaml.safe_load(text) or {}
    raise ValueError(f"manifest '{path}' must be .toml, .yaml or .yml")


def load_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Parse a TOML or YAML manifest; entries inherit ``[defaults]``, relative paths resolve next to the manifest."""
    path = Path(path).resolve()
    raw = _read_manifest_file(path)
    _check_keys(raw, _TOP_LEVEL_KEYS, f"'{path}'")
    defaults = raw.get('defaults', {})
    _check_keys(defaults, _ENTRY_KEYS, f"'{path}' [defaults]")
    url_base, repo_owner = raw.get('url_base'), raw.get('repo_owner')
    entries = []
    for index, item in enumerate(raw.get('checkpoints', [])):
        where = f"'{path}' checkpoint #{index + 1}"
        _check_keys(item, _ENTRY_KEYS, where)
        values = {**defaults, **item}
        if 'file' in values and 'url' not in values:
            values['url'] = urljoin(url_base, values['file']) if url_base else values['file']
        repo = values.pop('repo', None)
        if 'repo_id' not in values and repo:
            values['repo_id'] = repo if '/' in repo or not repo_owner else f'{repo_owner}/{repo}'
        values.pop('file', None)
        missing = [key for key in ('url', 'model', 'repo_id') if not values.get(key)]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        if urlparse(values['url']).scheme == '' and not Path(values['url']).is_absolute():
            values['url'] = str(path.parent / values['url'])
        entries.append(ManifestEntry(**values))
    if not entries:
        raise ValueError(f"'{path}' lists no [[checkpoints]]")
    return entries


@contextmanager
def _open_source(url: str, offset: int) -> Iterator[tuple[IO[bytes], int | None, bool]]:
    """Stream ``url`` from byte ``offset``: yields (stream, total size if known, whether it resumed at offset)."""
    parsed = urlparse(url)
    if parsed.scheme == 'file':
        with open(url2pathname(parsed.path), 'rb') as f:
            size = os.fstat(f.fileno()).st_size
            resumed = 0 < offset <= size
            f.seek(offset if resumed else 0)
            yield f, size, resumed
        return
    if parsed.scheme not in ('http', 'https'):
        raise ValueError(f'unsupported URL scheme in {url!r}; use http(s)://, file:// or a path')
    headers = {'Range': f'bytes={offset}-'} if offset else {}
    with urlopen(Request(url, headers=headers), timeout=60) as response:
        resumed = offset > 0 and response.status == 206
        length = response.headers.get('Content-Length')
        total = (int(length) + (offset if resumed else 0)) if length else None
        yield response, total, resumed


def _check_hash(path: Path, expected: str, url: str) -> str:
    """The file's full sha256, returned so that callers need not hash it again."""
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise HashMismatchError(f'{url}: sha256 {actual} does not match the expected {expected}')
    return actual


def fetch(url: str, expected_sha256: str | None, cache_dir: str | os.PathLike) -> Path:
    """Download ``url`` into ``cache_dir`` (resuming a ``.part`` file with an HTTP Range request) and check its hash.

    Plain paths are used in place. A file failing its hash is deleted, so the next run downloads it afresh.
    """
    return _fetch_and_hash(url, expected_sha256, cache_dir)[0]


def _fetch_and_hash(url: str, expected_sha256: str | None, cache_dir: str | os.PathLike) -> tuple[Path, str]:
    """``fetch``, also returning the full sha256 it checked."""
    if not expected_sha256:
        raise ValueError(f'{url}: no expected sha256, give one in the manifest (or its 8-hex prefix)')
    if urlparse(url).scheme == '':
        path = Path(url)
        if not path.is_file():
            raise FileNotFoundError(f"source checkpoint not found: '{path}'")
        return path, _check_hash(path, expected_sha256, url)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    destination = cache_dir / Path(urlparse(url).path).name
    if destination.is_file():
        try:
            return destination, _check_hash(destination, expected_sha256, url)
        except HashMismatchError:
            destination.unlink()
    partial = destination.with_name(destination.name + '.part')
    offset = partial.stat().st_size if partial.is_file() else 0
    try:
        with _open_source(url, offset) as (stream, total, resumed), \
                open(partial, 'ab' if resumed else 'wb') as out, \
                tqdm(total=total, initial=offset if resumed else 0, unit='B', unit_scale=True,
                     desc=destination.name, disable=not sys.stderr.isatty()) as progress:
            for chunk in iter(lambda: stream.read(_CHUNK), b''):
                out.write(chunk)
                progress.update(len(chunk))
    except HTTPError as e:
        if e.code != 416:  # 416: the .part file already holds the whole file
            raise
    try:
        actual_sha256 = _check_hash(partial, expected_sha256, url)
    except HashMismatchError:
        partial.unlink()
        raise
    partial.replace(destination)
    return destination, actual_sha256


@dataclass(frozen=True)
class BatchOutcome:
    name: str
    model: str
    repo_id: str
    ok: bool
    detail: str


def _already_staged(out_dir: Path, source_sha256: str) -> bool:
    if not (out_dir / WEIGHTS_NAME).is_file():
        return False
    return read_weights_metadata(out_dir).get('source_sha256') == source_sha256


def _process(entry: ManifestEntry, out_root: Path, cache_dir: Path, push: bool, force: bool,
             verify_image_size: int | None, log: Callable[[str], None]) -> str:
    checkpoint, source_sha256 = _fetch_and_hash(entry.url, entry.expected_sha256, cache_dir)
    out_dir = out_root / entry.repo_id.split('/')[-1]
    if not force and _already_staged(out_dir, source_sha256):
        detail = 'already staged'
    else:
        result = convert_to_dir(
            checkpoint, entry.model, out_dir, source=entry.source, force=force, repo_id=entry.repo_id,
            facts=entry.card_facts(), preprocessing=entry.preprocessing(), verify_image_size=verify_image_size,
            source_sha256=source_sha256,
        )
        detail = f'max abs diff {result.report.max_abs_diff:.2g}'
    if push:
        url = push_dir(out_dir, entry.repo_id, force=force, log=log)
        detail += f', pushed {url}'
    return detail


def run_batch(
        manifest: str | os.PathLike,
        out_root: str | os.PathLike,
        cache_dir: str | os.PathLike,
        push: bool = False,
        force: bool = False,
        verify_image_size: int | None = None,
        repo_owner: str | None = None,
        log: Callable[[str], None] = print,
) -> list[BatchOutcome]:
    """Process every manifest entry; failures are recorded with their reason and the run goes on.

    ``repo_owner`` replaces the user / organization of every target repo (e.g. to publish under your own account).
    """
    entries = load_manifest(manifest)
    if repo_owner:
        entries = [replace(e, repo_id=f"{repo_owner}/{e.repo_id.split('/')[-1]}") for e in entries]
    outcomes = []
    for index, entry in enumerate(entries, start=1):
        log(f'[{index}/{len(entries)}] {entry.display_name} -> {entry.model} ({entry.repo_id})')
        try:
            detail = _process(entry, Path(out_root), Path(cache_dir), push, force, verify_image_size, log)
            outcomes.append(BatchOutcome(entry.display_name, entry.model, entry.repo_id, True, detail))
        except Exception as e:  # one bad source must not stop the others; the reason goes into the summary
            reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
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

