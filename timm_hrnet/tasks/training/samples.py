"""What the pose and segmentation training data share: per-sample randomness that is a pure function of (seed,
epoch, index), a sampler whose order is a function of (seed, epoch) and that can start mid-epoch, and the policy for
bad samples. Together they make a resumed run see exactly the batches an uninterrupted one sees, with any number of
DataLoader workers and any number of processes for the same global batch."""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from os import PathLike
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, DistributedSampler

__all__ = ['BadSampleError', 'OnBadSample', 'BAD_SAMPLE_POLICIES', 'sample_rng', 'EpochSampler', 'check_policy',
           'Problems', 'refuse_or_skip', 'bad_sample_problem', 'image_header_size', 'data_fingerprint']

_logger = logging.getLogger(__name__)

OnBadSample = Literal['error', 'skip']
BAD_SAMPLE_POLICIES: tuple[str, ...] = ('error', 'skip')


class BadSampleError(ValueError):
    """A training sample that cannot be used as it is (the message names the file and what is wrong).

    A plain one-string exception, so that a DataLoader worker re-raises it in the main process unchanged.
    """


def check_policy(on_bad_sample: str) -> None:
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")


_SKIP_HINT = '(on_bad_sample="skip" leaves such samples out, counted in the log)'


class Problems:
    """The bad samples a dataset scan finds, by kind: with policy 'error' `finish` raises one error listing the
    first few and the counts, with 'skip' it logs the counts (the samples were left out)."""

    def __init__(self, on_bad_sample: str, shown: int = 5) -> None:
        check_policy(on_bad_sample)
        self.on_bad_sample = on_bad_sample
        self.shown = shown
        self.counts: dict[str, int] = {}
        self.examples: list[str] = []

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.examples) < self.shown:
            self.examples.append(message)

    def finish(self, source: str) -> dict[str, int]:
        if not self.counts:
            return {}
        summary = ', '.join(f'{count} {kind}' for kind, count in self.counts.items())
        if self.on_bad_sample == 'error':
            listed = '\n  '.join(self.examples)
            raise BadSampleError(f'{source}: {summary}:\n  {listed}\n{_SKIP_HINT}')
        _logger.warning('%s: skipped %s (e.g. %s)', source, summary, self.examples[0])
        return dict(self.counts)


def refuse_or_skip(message: str, on_bad_sample: str) -> None:
    """At load time: raise `message` (policy 'error'), or log it (policy 'skip'; the caller returns an empty
    sample, counted in the training log)."""
    if on_bad_sample == 'error':
        raise BadSampleError(f'{message} {_SKIP_HINT}')
    _logger.warning('skipped sample: %s', message)


def bad_sample_problem(error: BadSampleError) -> str:
    """What a load-time error says is wrong, without the skip hint: also when a DataLoader worker raised it, which
    torch re-raises with the worker's traceback in the message."""
    text = str(error)
    marker = f'{BadSampleError.__name__}: '
    if 'Original Traceback' in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip().removesuffix(_SKIP_HINT).strip()


_ORIENTATION = 0x0112
_TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def image_header_size(path: str | PathLike) -> tuple[int, int]:
    """(width, height) of an image file as `timm_hrnet.images` will decode it (EXIF orientation applied), from its
    header only: the cheap up-front check of a data set. Unreadable headers raise BadSampleError naming the file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(_ORIENTATION, 1) in _TURNED
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise BadSampleError(f'cannot read image {path}: {error}') from error
    return (height, width) if turned else (width, height)


def data_fingerprint(samples: Iterable[Any]) -> dict[str, Any]:
    """The sample count and a sha256 of the sample list (each sample a JSON-able row: paths relative to the data
    folders, boxes, joints), which a checkpoint stores so that resuming on other data is refused: the sample
    order and the position in the epoch only mean the same batches on the same list."""
    digest = hashlib.sha256()
    count = 0
    for row in samples:
        digest.update(json.dumps(row, sort_keys=True).encode() + b'\n')
        count += 1
    return dict(samples=count, sha256=digest.hexdigest())


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation randomness of one sample in one epoch, independent of workers, processes and resumption."""
    return np.random.default_rng([seed, epoch, index])


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (shuffled by (seed, epoch), sharded rank::world_size, drop_last) yielding
    (epoch, index) pairs, so the dataset knows the epoch inside any worker, and able to skip the first samples of
    its shard for a resumption mid-epoch.

    Global batch k of an epoch is the k-th slice of the epoch's permutation whatever the world size, so one process
    with batch B x W sees the samples that W processes with batch B see together.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch `epoch` from the `skip`-th sample of this rank's shard."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        return iter([(self.epoch, int(i)) for i in indices[self.skip:]])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)
