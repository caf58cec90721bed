"""Where the task pipelines' pictures come from and go to: an image, a folder of images or a video file in; images
or a video out.

Video goes through PyAV (FFmpeg, bundled in its wheels: the `video` extra), the library torchvision's own video IO
used before torchvision dropped it. Frames are decoded one at a time, so long videos stream. An output video is
written under a temporary name and renamed once complete: an error midway leaves nothing half-written.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..images import IMAGE_SUFFIXES, list_images, open_image
from ..outputs import atomic_path

__all__ = ['VIDEO_SUFFIXES', 'IMAGE_SUFFIXES', 'UnreadableVideoError', 'Frame', 'is_video', 'list_images',
           'read_frames', 'video_fps', 'VideoWriter', 'write_video']

VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv')


class UnreadableVideoError(ValueError):
    """A video file that is missing, or that FFmpeg cannot open or decode; names the file."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f'cannot read video {path}: {reason}')
        self.path = str(path)


@dataclass(frozen=True)
class Frame:
    """One picture of a source: its name (file stem, or the video's stem and frame number) and pixels."""

    name: str
    index: int
    image: Image.Image


def _av() -> Any:
    try:
        import av
    except ImportError as error:
        raise ImportError('video input and output need PyAV: pip install "timm-hrnet[video]" (or pip install av)'
                          ) from error
    return av


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def video_fps(path: str | os.PathLike) -> Fraction:
    """Frames per second of a video's first video stream."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            return Fraction(stream.average_rate or stream.guessed_rate or 25)
    except av.error.FFmpegError as error:
        raise UnreadableVideoError(path, str(error)) from error


def _video_stream(container: Any, path: str | os.PathLike) -> Any:
    if not container.streams.video:
        raise UnreadableVideoError(path, 'it has no video stream')
    return container.streams.video[0]


def _read_video(path: Path) -> Iterator[Frame]:
    av = _av()
    if not path.is_file():
        raise UnreadableVideoError(path, 'no such file')
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            for index, frame in enumerate(container.decode(stream)):
                yield Frame(f'{path.stem}_{index:06d}', index, frame.to_image())
    except av.error.FFmpegError as error:
        raise UnreadableVideoError(path, str(error)) from error


def read_frames(source: str | os.PathLike) -> Iterator[Frame]:
    """The pictures of an image file, a folder of images (by name) or a video (in order), one at a time."""
    path = Path(source)
    if path.is_dir():
        return (Frame(p.stem, k, open_image(p)) for k, p in enumerate(list_images(path)))
    if is_video(path):
        return _read_video(path)
    return iter([Frame(path.stem, 0, open_image(path))])


class VideoWriter:
    """Encode RGB frames (PIL images or HWC uint8 arrays of one size) into a video file: H.264 where FFmpeg has an
    encoder for it, else MPEG-4 Part 2. Frames of odd size are padded by a pixel (yuv420p needs even sizes)."""

    def __init__(self, container: Any, fps: Fraction, codec: str) -> None:
        self._container = container
        self._fps = fps
        self._codec = codec
        self._stream: Any = None

    def write(self, frame: Image.Image | np.ndarray) -> None:
        av = _av()
        array = np.asarray(frame.convert('RGB') if isinstance(frame, Image.Image) else frame, dtype=np.uint8)
        height, width = array.shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream(self._codec, rate=self._fps)
            self._stream.width, self._stream.height = width + width % 2, height + height % 2
            self._stream.pix_fmt = 'yuv420p'
        if (width + width % 2, height + height % 2) != (self._stream.width, self._stream.height):
            raise ValueError(f'video frames must all have one size: {self._stream.width}x{self._stream.height} '
                             f'then {width}x{height}')
        array = np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode='edge')
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(array, format='rgb24')):
            self._container.mux(packet)

    def finish(self) -> None:
        """Flush the encoder (`write_video` does it when its block ends)."""
        if self._stream is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)


@contextmanager
def write_video(path: str | os.PathLike, fps: float | Fraction = 25) -> Iterator[VideoWriter]:
    """A `VideoWriter` for `path`, renamed into place only when the block completes without an error."""
    av = _av()
    codec = next((c for c in ('libx264', 'h264', 'mpeg4') if c in av.codecs_available), None)
    if codec is None:
        raise RuntimeError('this FFmpeg build has no H.264 or MPEG-4 encoder')
    with atomic_path(path) as partial, av.open(str(partial), mode='w') as container:
        writer = VideoWriter(container, Fraction(fps).limit_denominator(1001), codec)
        yield writer
        writer.finish()
