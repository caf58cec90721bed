"""Helpers shared by the hub_upload test modules (no tests here): hashes, directory snapshots, manifests, a fake Hub
API, a local HTTP server that can serve ranges and cut a download short, and the model a card's snippet builds."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, str]:
    """Every file below ``directory`` (hidden ones too) with its sha256."""
    return {p.relative_to(directory).as_posix(): sha256(p) for p in sorted(directory.rglob('*')) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Hidden entries (staging / displaced directories) next to the repos."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith('.'))


def cache_entry(cache: Path, url: str) -> Path:
    """Where timm_hrnet.download keeps a URL's file: one directory per URL."""
    return cache / hashlib.sha256(url.encode()).hexdigest()[:16] / Path(url).name


def write_manifest(path: Path, entries: list[dict], repo_owner: str = 'someone', **defaults: object) -> Path:
    lines = [f'repo_owner = "{repo_owner}"', '', '[defaults]']
    defaults = {'source': 'auto', 'license': 'apache-2.0', **defaults}
    lines += [f'{key} = {json.dumps(value)}' for key, value in defaults.items()]
    for entry in entries:
        lines += ['', '[[checkpoints]]', *(f'{key} = {json.dumps(value)}' for key, value in entry.items())]
    path.write_text('\n'.join(lines) + '\n')
    return path


class FakeHfApi:
    """Records calls. The remote repo holds ``remote_files`` at commit ``head``; ``race`` moves the head between the
    file listing and the upload, as a concurrent push would, and the upload then fails like the Hub's (412)."""

    def __init__(self, remote_files: list[str], private: bool = False, exists: bool = True, race: bool = False) -> None:
        self.remote_files, self.private, self.exists, self.race = remote_files, private, exists, race
        self.head = 'a' * 40
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, token=None) -> FakeHfApi:
        return self

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(('create_repo', dict(repo_id=repo_id, private=private, exist_ok=exist_ok)))
        if not self.exists:
            self.exists, self.private = True, private
        return SimpleNamespace(repo_id=repo_id)

    def repo_info(self, repo_id, revision=None):
        assert self.exists, 'create_repo(exist_ok=True) comes first'
        return SimpleNamespace(sha=self.head, private=self.private)

    def list_repo_files(self, repo_id, revision=None):
        assert revision == self.head, 'the files must be listed at the pinned commit'
        if self.race:
            self.head = 'b' * 40
        return self.remote_files

    def upload_folder(self, **kwargs):
        self.calls.append(('upload_folder', kwargs))
        if kwargs.get('parent_commit') != self.head:
            raise HfHubHTTPError('412 Precondition Failed: a commit has happened since',
                                 response=SimpleNamespace(status_code=412, headers={}, request=None))
        return SimpleNamespace(pr_url=None, commit_url=f'https://hub/{kwargs["repo_id"]}/commit/1')


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``payload`` at any path, honouring ``Range: bytes=N-`` like a CDN; records the ranges asked for.

    ``cut_after`` bytes into the first response the connection is closed although Content-Length promised more,
    as when a network drops."""

    payload = b''
    ranges: list[str | None] = []
    cut_after: int | None = None

    def do_GET(self) -> None:
        requested = self.headers.get('Range')
        type(self).ranges.append(requested)
        start = int(requested.removeprefix('bytes=').rstrip('-')) if requested else 0
        body = self.payload[start:]
        self.send_response(206 if requested else 200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            type(self).cut_after, cut = None, self.cut_after
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve(payload: bytes, cut_after: int | None = None) -> Iterator[SimpleNamespace]:
    """A local HTTP server (127.0.0.1 only) for ``payload``: ``.url`` is its base URL, ``.ranges`` what it was asked."""
    handler = type('Handler', (RangeHandler,), dict(payload=payload, ranges=[], cut_after=cut_after))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f'http://127.0.0.1:{server.server_port}', ranges=handler.ranges)
    finally:
        server.shutdown()
        server.server_close()


def as_the_card_says(repo: Path, weights: Path) -> torch.nn.Module:
    """The model the card's Python snippet builds, run as written up to the model, the download replaced by
    `weights` (the card's own text, executed)."""
    snippet = ModelCard.load(repo / 'README.md').text.split('```python\n', 1)[1].split('```', 1)[0]
    lines = snippet.splitlines()
    lines = lines[:next(i for i, line in enumerate(lines) if line.startswith('model = ')) + 1]
    code = '\n'.join(f'weights = {str(weights)!r}' if line.startswith('weights = ') else line for line in lines)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102  (the card's own text)
    return namespace['model']
