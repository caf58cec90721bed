"""Run the task models over many pictures: the frames of a video or the images of a folder (`media.read_frames`).

Pose batches the person crops of several frames into one forward pass (a detector, when given, sees those frames
in one call too); segmentation runs frame by frame (its multi-scale and sliding-window modes need the frame's own
size). Results stream: a long video is never held in memory.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from .detection import DetectorLike
from .media import Frame
from .pose import HRNetPose
from .segmentation import HRNetSeg

__all__ = ['pose_frames', 'segment_frames']


def _chunks(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    iterator = iter(frames)
    while chunk := list(islice(iterator, size)):
        yield chunk


def pose_frames(
        model: HRNetPose,
        frames: Iterable[Frame],
        detector: DetectorLike | None = None,
        boxes: Sequence[Sequence[float]] | None = None,
        flip_test: bool | None = None,
        frames_per_batch: int = 8,
        crops_per_batch: int = 64,
) -> Iterator[tuple[Frame, dict[str, Any]]]:
    """(frame, `HRNetPose.predict` result) per frame. People come from `detector`, or the same `boxes` on every
    frame, or the whole frame."""
    if frames_per_batch < 1 or crops_per_batch < 1:
        raise ValueError(f'batch sizes must be positive, got {frames_per_batch} frames, {crops_per_batch} crops')
    for chunk in _chunks(frames, frames_per_batch):
        images = [frame.image for frame in chunk]
        per_frame = None if boxes is None else [boxes] * len(chunk)
        results = model.predict_batch(images, per_frame, flip_test, detector=detector, batch_size=crops_per_batch)
        yield from zip(chunk, results)


def segment_frames(
        model: HRNetSeg,
        frames: Iterable[Frame],
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        window: tuple[int, int] | None = None,
) -> Iterator[tuple[Frame, dict[str, Any]]]:
    """(frame, `HRNetSeg.predict` result) per frame."""
    for frame in frames:
        yield frame, model.predict(frame.image, scales=scales, flip=flip, window=window)
