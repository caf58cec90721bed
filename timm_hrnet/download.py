"""Checkpoint arguments as local files: URLs downloaded once into a cache (resumable, hash-checked), paths checked.

`timm-hrnet --checkpoint`, `hub_upload convert / verify` and `hub_upload batch` all read checkpoints through
`resolve_checkpoint`, so a URL is fetched the same way everywhere:

* https only; plain http (no transport security) needs ``allow_http=True`` (the ``--allow-http`` flags); ``file://``
  URLs and paths are local and always allowed;
* the file is written to ``<cache>/<url key>/<name>.part`` and renamed only once complete, so an interrupted download
  resumes with an HTTP ``Range`` request and a half-written file is never taken for a checkpoint;
* its sha256 is checked against the expected digest: one given explicitly, or the hex prefix of a torch.hub-style file
  name (``..._20220120-0c10b180.pth``). A prefix (8 hex digits are 32 bits) identifies a download but does not
  authenticate it, so a prefix-only match is reported as such (`FetchedFile.verified`) with a warning.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, url2pathname, urlopen

__all__ = [
    'DownloadError',
    'FetchedFile',
    'HashMismatchError',
    'check_sha256',
    'default_cache_dir',
    'fetch',
    'file_sha256',
    'hash_from_name',
    'is_url',
    'resolve_checkpoint',
]

Verification = Literal['full', 'prefix', 'unchecked']

# torch.hub names files `<name>-<first hex digits of the sha256>.<ext>`
_HASH_IN_NAME = re.compile(r'-([0-9a-f]{8,64})\.[A-Za-z0-9]+$')
# an all-digit token that reads as YYYYMMDD is a date (..._20220120.pth), not a hash prefix
_DATE = re.compile(r'(19|20)\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])')
_SHA256 = re.compile(r'[0-9a-f]{8,64}')
_URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')
_CHUNK = 1 << 20
_ZIP_MAGIC = b'PK\x03\x04'
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


class DownloadError(OSError):
    """A download that could not complete; what arrived is kept as ``.part`` for the next attempt to resume."""


class HashMismatchError(ValueError):
    """A file whose sha256 is not the expected one (a downloaded file failing the check is deleted)."""


@dataclass(frozen=True)
class FetchedFile:
    """A local checkpoint file, where it came from and how far its identity was checked."""

    path: Path
    sha256: str  # the full digest of the file as read
    verified: Verification  # 'full': matched a full expected sha256; 'prefix': only a hex prefix; 'unchecked': none
    url: str | None = None  # the URL it was downloaded from; None for a local path


def default_cache_dir() -> Path:
    """Where downloaded checkpoints live: $XDG_CACHE_HOME (or ~/.cache) / timm_hrnet / sources."""
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'timm_hrnet' / 'sources'


def is_url(text: str | os.PathLike) -> bool:
    """A ``scheme://`` string; everything else is a path."""
    return isinstance(text, str) and bool(_URL.match(text))


def hash_from_name(name: str) -> str | None:
    """The sha256 prefix a torch.hub-style file name ends with (``..._20220120-0c10b180.pth``), or None.

    A date in that position (``model-20220120.pth``) is not taken for a hash.
    """
    match = _HASH_IN_NAME.search(name)
    if match is None or _DATE.fullmatch(match.group(1)):
        return None
    return match.group(1)


def check_sha256(value: str) -> str:
    """A digest as given by a user: 64 hex digits, or a prefix of at least 8; lower-cased."""
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise ValueError(f'invalid sha256 {value!r}: expected 64 hex digits (or a prefix of at least 8)')
    return digest


def file_sha256(path: str | os.PathLike) -> str:
    """Hash in chunks so multi-hundred-MB checkpoints do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _warn(message: str) -> None:
    print(f'warning: {message}', file=sys.stderr)


def _check_local_file(path: Path) -> None:
    """Refuse what cannot be a checkpoint before a loader reports it obscurely (torch says nothing for 0 bytes)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"'{path}' is empty (0 bytes): an interrupted download or copy?")
    with open(path, 'rb') as f:
        head = f.read(8)
        if path.suffix == '.safetensors':
            expected = _safetensors_size(f, head)
            if expected is not None and expected > size:
                raise ValueError(f"'{path}' is truncated ({size} bytes, its header declares at least {expected}): "
                                 'an interrupted download or copy?')
    if head[:4] == _ZIP_MAGIC and not zipfile.is_zipfile(path):  # torch.save's zip archive has its directory last
        raise ValueError(f"'{path}' is truncated ({size} bytes, the end of its zip archive is missing): "
                         'an interrupted download or copy?')


def _safetensors_size(f: IO[bytes], head: bytes) -> int | None:
    """The size a safetensors file declares (8-byte header length, JSON header, then the tensors), None if unclear;
    the header length alone when the header itself is cut short."""
    if len(head) < 8:
        return None
    length = struct.unpack('<Q', head)[0]
    try:
        header = json.loads(f.read(min(length, _MAX_HEADER)))
        ends = [entry['data_offsets'][1] for key, entry in header.items() if key != '__metadata__']
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return 8 + length if length <= _MAX_HEADER else None  # a header cut short counts as truncated
    return 8 + length + max(ends, default=0)


def _verification(actual: str, expected: str | None, where: str, log: Callable[[str], None]) -> Verification:
    if expected is None:
        return 'unchecked'
    if not actual.startswith(expected):
        raise HashMismatchError(f'{where}: sha256 {actual} does not match the expected {expected}')
    if len(expected) == 64:
        return 'full'
    log(f'{where} matched only the {len(expected)}-hex-digit sha256 prefix {expected} ({4 * len(expected)} bits); '
        f'its full sha256 is {actual}')
    return 'prefix'


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
    headers = {'Range': f'bytes={offset}-'} if offset else {}
    with urlopen(Request(url, headers=headers), timeout=60) as response:
        resumed = offset > 0 and response.status == 206
        length = response.headers.get('Content-Length')
        total = (int(length) + (offset if resumed else 0)) if length else None
        yield response, total, resumed


def _copy(stream: IO[bytes], out: IO[bytes], url: str, partial: Path, written: int) -> int:
    """Copy until the stream ends; a read failure and a write failure (a full disk) are told apart."""
    while True:
        try:
            chunk = stream.read(_CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f'download of {url} was interrupted after {written} bytes ({type(e).__name__}); '
                                f'run again to resume from {partial}') from e
        if not chunk:
            return written
        try:
            out.write(chunk)
        except OSError as e:
            raise DownloadError(f'cannot write {partial}: {e.strerror or e} (what arrived is kept for resuming)') from e
        written += len(chunk)


def _download(url: str, destination: Path) -> None:
    """Fetch into ``destination.part`` (resuming it when present), then rename it to ``destination``."""
    partial = destination.with_name(destination.name + '.part')
    offset = partial.stat().st_size if partial.is_file() else 0
    try:
        with _open_source(url, offset) as (stream, total, resumed), open(partial, 'ab' if resumed else 'wb') as out:
            written = _copy(stream, out, url, partial, offset if resumed else 0)
    except HTTPError as e:
        if e.code != 416:  # 416: the .part file already holds the whole file
            raise DownloadError(f'download of {url} failed: HTTP {e.code} {e.reason}') from e
        total = written = offset
    except URLError as e:
        raise DownloadError(f'cannot download {url}: {e.reason}') from e
    if total is not None and written != total:
        raise DownloadError(f'download of {url} stopped at {written} of {total} bytes; run again to resume')
    partial.replace(destination)


def fetch(
        url: str,
        expected_sha256: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        *,
        allow_http: bool = False,
        require_hash: bool = False,
        log: Callable[[str], None] = _warn,
) -> FetchedFile:
    """Download ``url`` into the cache once and check its sha256 (``expected_sha256``, else the file name's prefix).

    ``require_hash`` refuses a URL with nothing to check it against (what is published must be identified). A file
    failing its hash is deleted, so the next run downloads it afresh.
    """
    scheme = urlparse(url).scheme.lower()
    if scheme == 'http' and not allow_http:
        raise ValueError(f'refusing plain http:// download of {url} (no transport security); use https:// or '
                         'pass --allow-http')
    if scheme not in ('http', 'https', 'file'):
        raise ValueError(f"unsupported URL scheme '{scheme}' in {url}; use https://, file:// or a path")
    name = Path(urlparse(url).path).name
    if not name:
        raise ValueError(f'{url} names no file')
    expected = check_sha256(expected_sha256) if expected_sha256 else hash_from_name(name)
    if expected is None and require_hash:
        raise ValueError(f'{url}: no sha256 to check it against; give one (--sha256 / the manifest\'s sha256) or use '
                         'a torch.hub-style file name ending in -<hash prefix>')
    # one directory per URL: two URLs ending in the same file name never share a cache entry
    directory = Path(cache_dir or default_cache_dir()) / hashlib.sha256(url.encode()).hexdigest()[:16]
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / name
    if destination.is_file():
        actual = file_sha256(destination)
        if expected is None or actual.startswith(expected):
            return FetchedFile(destination, actual, _verification(actual, expected, url, log), url)
        destination.unlink()  # a stale or corrupt cache entry: download again
    _download(url, destination)
    actual = file_sha256(destination)
    try:
        verified = _verification(actual, expected, url, log)
    except HashMismatchError:
        destination.unlink()
        raise
    if verified == 'unchecked':
        log(f'{url} has no sha256 to be checked against; it was downloaded as is (sha256 {actual})')
    return FetchedFile(destination, actual, verified, url)


def resolve_checkpoint(
        source: str | os.PathLike,
        expected_sha256: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        *,
        allow_http: bool = False,
        require_hash: bool = False,
        log: Callable[[str], None] = _warn,
) -> FetchedFile:
    """A checkpoint argument (URL or path) as a checked local file; see the module docstring.

    A path is checked against ``expected_sha256`` when one is given (its file name's prefix is not required:
    local files are the user's own).
    """
    if is_url(source):
        fetched = fetch(str(source), expected_sha256, cache_dir, allow_http=allow_http, require_hash=require_hash,
                        log=log)
    else:
        path = Path(source)
        _check_local_file(path)
        expected = check_sha256(expected_sha256) if expected_sha256 else None
        actual = file_sha256(path)
        fetched = FetchedFile(path, actual, _verification(actual, expected, f"'{path}'", log))
    _check_local_file(fetched.path)
    return fetched
