"""Upload a staged repo directory to the Hugging Face Hub without clobbering weights that are already there."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import RevisionNotFoundError

__all__ = ['PushError', 'PushRefusedError', 'WEIGHT_SUFFIXES', 'staged_files', 'push_dir']

WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.pth', '.pt', '.ckpt', '.h5', '.msgpack', '.npz')
_REQUIRED = (constants.SAFETENSORS_SINGLE_FILE, constants.CONFIG_NAME, constants.REPOCARD_NAME)


class PushError(RuntimeError):
    """The Hub could not be reached or rejected the upload; the local directory is untouched."""


class PushRefusedError(PushError):
    """The target repo already holds weights and --force was not given."""


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


def push_dir(
        repo_dir: str | os.PathLike,
        repo_id: str,
        private: bool = False,
        revision: str | None = None,
        create_pr: bool = False,
        dry_run: bool = False,
        force: bool = False,
        token: str | None = None,
        log: Callable[[str], None] = print,
) -> str | None:
    """Create the repo if needed and upload the directory in one commit; returns the commit or PR URL.

    The token comes from ``token``, else HF_TOKEN or the login saved by ``hf auth login`` (huggingface_hub's own
    lookup). ``dry_run`` only reports what would be uploaded where and makes no network request.
    """
    repo_dir = Path(repo_dir)
    files = staged_files(repo_dir)
    names = [name for name, _ in files]
    target = f'{constants.ENDPOINT}/{repo_id}'
    where = f"{target} (revision {revision or 'main'}{', as a pull request' if create_pr else ''})"
    if f'hf-hub:{repo_id}' not in (repo_dir / constants.REPOCARD_NAME).read_text(encoding='utf-8'):
        log(f'warning: the model card\'s usage snippets name another repo; restage with --repo-id {repo_id}')
    if dry_run:
        total = sum(size for _, size in files)
        log(f'dry run, nothing uploaded: {len(files)} files ({_human_size(total)}) from {repo_dir} would go to {where}')
        for name, size in files:
            log(f'  {name:<24} {_human_size(size):>12}  ->  {target}/blob/{revision or "main"}/{name}')
        return None

    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        try:
            existing = api.list_repo_files(repo_id, revision=revision)
        except RevisionNotFoundError:
            if create_pr:
                raise
            api.create_branch(repo_id, branch=revision, exist_ok=True)
            existing = []
        existing_weights = sorted(name for name in existing if name.endswith(WEIGHT_SUFFIXES))
        if existing_weights and not force:
            raise PushRefusedError(
                f"{where} already holds weights ({', '.join(existing_weights)}); pass --force to overwrite them"
            )
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=repo_dir,
            revision=revision,
            create_pr=create_pr,
            allow_patterns=names,
            commit_message=f'Add {repo_dir.name} weights (timm_hrnet hub_upload)',
        )
    except PushError:
        raise
    except Exception as e:  # every transport / Hub failure becomes one line; the local directory is never modified
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PushError(f'push of {repo_dir} to {where} failed: {type(e).__name__}: {reason}') from e
    return commit.pr_url or commit.commit_url
