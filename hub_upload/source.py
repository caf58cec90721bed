"""A source checkpoint read once: the file as fetched and hashed, and what timm_hrnet's one reader made of it.

The CLI, batch and the converters pass this value on, so that the file is read, and a task checkpoint's
architecture worked out, once per conversion. Verification reads the source again on purpose, by its own path: it
must not trust what the conversion read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from timm_hrnet.checkpoints import Checkpoint, read_checkpoint
from timm_hrnet.download import FetchedFile, resolve_checkpoint

__all__ = ['Source', 'fetched_file', 'read_source']


@dataclass(frozen=True)
class Source:
    fetched: FetchedFile
    checkpoint: Checkpoint

    @property
    def path(self) -> Path:
        return self.fetched.path


def fetched_file(src: Source | FetchedFile | str | os.PathLike) -> FetchedFile:
    """The local, hashed file behind ``src`` (a local path is hashed here; URLs are fetched by the caller)."""
    if isinstance(src, Source):
        return src.fetched
    return src if isinstance(src, FetchedFile) else resolve_checkpoint(src)


def read_source(src: Source | FetchedFile | str | os.PathLike) -> Source:
    """``src`` read by ``timm_hrnet.checkpoints.read_checkpoint``, unless it already was (a `Source`)."""
    if isinstance(src, Source):
        return src
    fetched = fetched_file(src)
    return Source(fetched, read_checkpoint(fetched.path))
