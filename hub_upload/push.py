"""Upload a staged repo directory to the Hugging Face Hub without clobbering weights that are already there.

The upload is pinned to the commit whose file list was checked (``parent_commit``): if anyone pushes in between,
the Hub rejects the commit and nothing is overwritten. Imports nothing heavy, so ``push`` starts without torch.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

from .names import validate_repo_id

__all__ = ['PushError', 'PushRefusedError', 'WEIGHT_SUFFIXES', 'push_dir', 'read_weights_metadata', 'staged_files']

WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.pth', '.pt', '.ckpt', '.h5', '.msgpack', '.npz')
_REQUIRED = (constants.SAFETENSORS_SINGLE_FILE, constants.CONFIG_NAME, constants.REPOCARD_NAME)
_PRECONDITION_FAILED = 412  # the Hub's answer to a commit whose parent_commit is no longer the branch head


class PushError(RuntimeError):
    """The Hub could not be reached or rejected the upload; the local directory is untouched."""


class PushRefusedError(PushError):
    """The push would overwrite weights, change nothing it was asked to, or publish an unidentified source."""


def read_weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header (no torch needed)."""
    with open(path, 'rb') as f:
        header = f.read(8)
        if len(header) != 8:
            raise ValueError(f"'{path}' is not a safetensors file (too short)")
        length = struct.unpack('<Q', header)[0]
        if length > os.fstat(f.fileno()).st_size - 8:
            raise ValueError(f"'{path}' is not a safetensors file (its header is cut off)")
        try:
            return dict(json.loads(f.read(length)).get('__metadata__') or {})
        except ValueError as e:
            raise ValueError(f"'{path}' is not a safetensors file (unreadable header)") from e


def staged_files(repo_dir: str | os.PathLike) -> list[tuple[str, int]]:
    """Files that an upload sends, relative to the repo root, with their sizes; hidden files stay local."""
    repo_dir = Path(repo_dir)
    missing = [name for name in _REQUIRED if not (repo_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"'{repo_dir}' is not a staged repo, missing: {', '.join(missing)}")
    return [
        (path.relative_to(repo_dir).as_posix(), path.stat().st_size)
        for path in sorted(repo_dir.rglob('*'))
        if path.is_file() and not any(part.startswith('.') for part in path.relative_to(repo_dir).parts)
    ]


def _human_size(size: int) -> str:
    for unit in ('B', 'KiB', 'MiB'):
        if size < 1024:
            return f'{size:.0f} {unit}' if unit == 'B' else f'{size:.1f} {unit}'
        size /= 1024
    return f'{size:.2f} GiB'


def _check_source_identified(repo_dir: Path) -> None:
    """Published weights name their source by a full sha256; an 8-hex prefix (32 bits) only identified a download."""
    metadata = read_weights_metadata(repo_dir / constants.SAFETENSORS_SINGLE_FILE)
    if metadata.get('source_sha256_check') == 'prefix':
        raise PushRefusedError(
            f"the source of {repo_dir} ({metadata.get('source_file')}) was checked only against a sha256 prefix; "
            f"publishing needs its full sha256: confirm {metadata.get('source_sha256')} with the source, then "
            'restage with it (convert --sha256, or sha256 in the manifest)'
        )


def _head(api: HfApi, repo_id: str, revision: str | None, create_pr: bool) -> str:
    """The commit the branch points at now, creating the branch (from main) when it does not exist yet."""
    try:
        return api.repo_info(repo_id, revision=revision).sha
    except RevisionNotFoundError:
        if create_pr or revision is None:
            raise
    api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.repo_info(repo_id, revision=revision).sha


def push_dir(
        repo_dir: str | os.PathLike,
        repo_id: str,
        private: bool = False,
        revision: str | None = None,
        create_pr: bool = False,
        dry_run: bool = False,
        overwrite_weights: bool = False,
        token: str | None = None,
        log: Callable[[str], None] = print,
) -> str | None:
    """Create the repo if needed and upload the directory in one commit; returns the commit or PR URL.

    Refused: weights already at the checked revision (unless ``overwrite_weights``), ``private`` for a repo that
    exists and is public (visibility is not changed as a side effect), and a source identified only by a hash
    prefix. The token comes from ``token``, else HF_TOKEN or ``hf auth login``. ``dry_run`` makes no request.
    """
    repo_dir = Path(repo_dir)
    validate_repo_id(repo_id)
    files = staged_files(repo_dir)
    _check_source_identified(repo_dir)
    names = [name for name, _ in files]
    target = f'{constants.ENDPOINT}/{repo_id}'
    where = f"{target} (revision {revision or 'main'}{', as a pull request' if create_pr else ''})"
    card = (repo_dir / constants.REPOCARD_NAME).read_text(encoding='utf-8')
    if f'hf-hub:{repo_id}' not in card and f"hf_hub_download('{repo_id}'" not in card:  # classifier / task cards
        log(f'warning: the model card\'s usage snippets name another repo; restage with --repo-id {repo_id}')
    if dry_run:
        total = sum(size for _, size in files)
        log(f'dry run, nothing uploaded: {len(files)} files ({_human_size(total)}) from {repo_dir} would go to {where}')
        for name, size in files:
            log(f'  {name:<24} {_human_size(size):>12}  ->  {target}/blob/{revision or "main"}/{name}')
        return None

    api = HfApi(token=token)
    head = None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)  # an existing repo keeps its visibility
        if private and not api.repo_info(repo_id).private:
            raise PushRefusedError(f'{repo_id} exists and is public; --private does not change that: make it private '
                                   'on the Hub first or push without --private. Nothing was uploaded')
        head = _head(api, repo_id, revision, create_pr)
        existing_weights = sorted(
            name for name in api.list_repo_files(repo_id, revision=head) if name.endswith(WEIGHT_SUFFIXES))
        if existing_weights and not overwrite_weights:
            raise PushRefusedError(f"{where} already holds weights ({', '.join(existing_weights)}); pass "
                                   '--overwrite-weights to replace them')
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=repo_dir,
            revision=revision,
            create_pr=create_pr,
            parent_commit=head,
            allow_patterns=names,
            commit_message=f'Add {repo_dir.name} weights (timm_hrnet hub_upload)',
        )
    except PushError:
        raise
    except HfHubHTTPError as e:
        if getattr(e.response, 'status_code', None) == _PRECONDITION_FAILED and head is not None:
            raise PushError(f'{where} changed while pushing (it was at {head[:12]} when its files were checked); '
                            'nothing was uploaded: run push again to re-check') from e
        raise PushError(f'push of {repo_dir} to {where} failed: {type(e).__name__}: {_first_line(e)}') from e
    except Exception as e:  # every transport / Hub failure becomes one line; the local directory is never modified
        raise PushError(f'push of {repo_dir} to {where} failed: {type(e).__name__}: {_first_line(e)}') from e
    return commit.pr_url or commit.commit_url


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ''
