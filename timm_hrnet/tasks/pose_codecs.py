"""Heatmap codecs of top-down pose models: how joints become training targets and heatmaps become joints again.

The network only computes heatmaps (one per joint at stride 4); the codec it was trained with fixes the rest: the
crop geometry, whether the flip test shifts the mirrored heatmaps by a column, the targets, and the decoding. One
class per rule, as mmpose's codecs are organised (written here from their papers and tested against mmpose's code):

* ``official`` (deep-high-resolution-net): a crop of box width / input width per pixel, the box centre at input
  size / 2; targets are Gaussians at the rounded joint cut at 3 sigma; decoding takes the argmax and moves it a
  quarter pixel toward the larger neighbour on each axis where 1 < x < w - 1 and 1 < y < h - 1 (no positive
  value: (0, 0)).
* ``mmpose`` (mmpose 1.x's MSRAHeatmap, which decodes mmpose's plain checkpoints of both layouts): the official
  geometry and targets; the quarter shift is decided per axis (x where 1 < x < w - 1 and 0 < y < h, y likewise) and
  a heatmap without a positive value gives (-1, -1), not shifted.
* ``dark`` (Zhang et al., "Distribution-Aware Coordinate Representation for Human Pose Estimation", CVPR 2020;
  mmpose's MSRAHeatmap(unbiased=True) and 0.x's post_process='unbiased'): Gaussians centred at the unrounded joint;
  decoding blurs each heatmap with a Gaussian (zero padding, rescaled to keep the map's maximum), takes the log and
  moves the argmax by one Newton step of its second-order Taylor expansion where 1 < x < w - 2 and 1 < y < h - 2.
  The blur kernel (``dark:17``) belongs to the training config: mmpose 0.x configs use 17 for sigma 3, mmpose 1.x
  configs of the same files leave their default, 11.
* ``udp`` (Huang et al., "The Devil is in the Details: Delving into Unbiased Data Processing for Human Pose
  Estimation", CVPR 2020; mmpose's UDPHeatmap and 0.x's use_udp=True): pixel grids measured in (size - 1) units, so
  crop corners map to box corners and heatmap corners to crop corners; no flip shift (the mirrored grid lines up);
  Gaussians at the unrounded joint, cut around the rounded one; decoding takes the log of the blurred heatmap
  (clipped to [1e-3, 50]) and one Newton step with edge-padded finite differences. mmpose 1.x blurs as DARK does
  (``udp`` / ``udp-mmpose1``); mmpose 0.x blurred in place, mirroring the border, without rescaling
  (``udp-mmpose0``).

* ``official-face`` (HRNet-Facial-Landmark-Detection's test, lib/core/evaluation.py `decode_preds`): the official
  crop geometry (a box of 200 x scale pixels); the argmax counted from 1, a quarter pixel toward the larger
  neighbour where 1 <= x <= w - 2 and 1 <= y <= h - 2 (0-based), plus half a pixel; a map without a positive value
  gives the point before the first pixel (-1 0-based); mapped into the image, each coordinate is cut to an integer
  (toward zero) and 1 added, as its `transform_pixel` does. Its test runs no flip test (`flip_test_default`).

A codec is named by a spec string: ``official``, ``official-face``, ``mmpose``, ``dark``, ``udp``, ``udp-mmpose0``,
``udp-mmpose1``, optionally with the blur kernel (``dark:17``); `parse_codec` reads it and `PoseCodec.spec` writes it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'PoseCodec', 'OfficialCodec', 'OfficialFaceCodec', 'MMPoseCodec', 'DarkCodec', 'UDPCodec', 'CODEC_NAMES',
    'parse_codec', 'resolve_codec', 'get_max_preds', 'decode_heatmaps', 'gaussian_heatmaps', 'gaussian_blur',
    'DEFAULT_BLUR_KERNEL',
]

DEFAULT_BLUR_KERNEL = 11  # mmpose's default for both DARK and UDP (sigma 2)


def get_max_preds(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """Integer (x, y) of each heatmap's maximum (the first one on ties) and the maximum; (0, 0) where it is <= 0."""
    width = heatmaps.shape[-1]
    maxvals, index = heatmaps.flatten(2).max(dim=-1)
    coords = torch.stack([index % width, torch.div(index, width, rounding_mode='floor')], dim=-1).float()
    return coords * (maxvals > 0).unsqueeze(-1), maxvals


def _argmax_or_minus_one(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """mmpose's `get_heatmap_maximum`: the argmax, (-1, -1) where the maximum is not positive."""
    coords, maxvals = get_max_preds(heatmaps)
    return coords.masked_fill((maxvals <= 0).unsqueeze(-1), -1.0), maxvals


def _at(maps: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """maps[n, j, y, x] for (N, J) index tensors, indices clamped into the map."""
    height, width = maps.shape[-2:]
    index = y.clamp(0, height - 1) * width + x.clamp(0, width - 1)
    return maps.flatten(2).gather(2, index.unsqueeze(-1)).squeeze(-1)


def gaussian_kernel(size: int) -> Tensor:
    """The 1-D float32 kernel of OpenCV's GaussianBlur with sigma 0 (which the references call): sigma
    0.3 * ((size - 1) / 2 - 1) + 0.8, except the fixed binomial-like kernels OpenCV uses for sizes up to 7."""
    fixed = {1: [1.0], 3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
             7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}
    if size in fixed:
        return torch.tensor(fixed[size], dtype=torch.float32)
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    values = np.exp(-x * x / (2 * sigma * sigma))
    return torch.from_numpy(values / values.sum()).float()


def _reflect101(index: Tensor, size: int) -> Tensor:
    """OpenCV's default border (BORDER_REFLECT_101: ...2 1 | 0 1 2 ... n-1 | n-2 ...) for any distance."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * size - 2
    index = index.abs() % period
    return torch.where(index >= size, period - index, index)


def _blur_matrix(size: int, weights: Tensor, border: str) -> Tensor:
    """The (size, size) matrix B with (B @ v) the 1-D blur of v: row i holds the kernel centred on i, the taps
    falling outside dropped (zero border) or added to the pixels they mirror onto (reflect101)."""
    radius = len(weights) // 2
    taps = torch.arange(size)[:, None] + torch.arange(-radius, radius + 1)[None, :]  # (size, kernel) pixel indices
    if border != 'zero':
        taps = _reflect101(taps, size)
    hits = taps[:, :, None] == torch.arange(size)[None, None, :]  # a tap outside the map hits no pixel
    return (hits * weights[None, :, None]).sum(1)


def gaussian_blur(heatmaps: Tensor, kernel: int, border: str = 'zero') -> Tensor:
    """(N, J, H, W) heatmaps blurred by a separable `gaussian_kernel` (its float32 taps), as banded matrix products
    in float64 rounded once to float32 (fast on CPU, exportable, within an ulp of OpenCV's float32 sums); outside
    the map zero (`border='zero'`, as the references pad before blurring) or mirrored ('reflect101')."""
    weights = gaussian_kernel(kernel).double()
    height, width = heatmaps.shape[-2:]
    rows = _blur_matrix(height, weights, border).to(heatmaps.device)
    cols = _blur_matrix(width, weights, border).to(heatmaps.device)
    return (rows @ heatmaps.double() @ cols.T).float()


@dataclass(frozen=True)
class PoseCodec:
    """The rule a heatmap model was trained with (module docstring). Subclasses set `name`, whether the flip test
    shifts the mirrored heatmaps by one column (`shift_flip`) and whether pixel grids are measured in (size - 1)
    units (`unbiased_grid`), and implement `locate` and `encode`."""

    name: ClassVar[str] = ''
    shift_flip: ClassVar[bool] = True
    unbiased_grid: ClassVar[bool] = False
    flip_test_default: ClassVar[bool] = True  # whether the reference's test runs the flip test

    @property
    def spec(self) -> str:
        """The string `parse_codec` reads back."""
        return self.name

    def frame(self, sizes: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """How pixel (u, v) of a (height, width) `grid` laid over boxes of `sizes` (P, 2) maps into the image:
        centre + ((u, v) - origin) * step; returns origin (2,) and step (P, 2). The plain grids put the box centre
        at size / 2 and scale both axes by box width / grid width (the official transform); UDP's put the box
        centre at (size - 1) / 2 and scale each axis by box size / (grid size - 1)."""
        height, width = grid
        if self.unbiased_grid:
            origin = sizes.new_tensor([(width - 1) / 2, (height - 1) / 2])
            return origin, sizes / sizes.new_tensor([width - 1, height - 1])
        return sizes.new_tensor([width / 2, height / 2]), (sizes[:, :1] / width).expand(-1, 2)

    def heatmap_scale(self, input_size: tuple[int, int], heatmap_size: tuple[int, int]) -> tuple[float, float]:
        """(x, y) input-crop pixels per heatmap pixel."""
        if self.unbiased_grid:
            return ((input_size[1] - 1) / (heatmap_size[1] - 1), (input_size[0] - 1) / (heatmap_size[0] - 1))
        return input_size[1] / heatmap_size[1], input_size[0] / heatmap_size[0]

    def to_image(self, points: Tensor) -> Tensor:
        """Keypoints mapped into the image as the reference leaves them (all but `official-face`: unchanged)."""
        return points

    def locate(self, heatmaps: Tensor, refine: bool = True) -> tuple[Tensor, Tensor]:
        """(N, J, 2) float32 keypoints in heatmap pixels and (N, J) scores (the heatmap maxima) of (N, J, h, w)
        heatmaps; without `refine` the integer argmax alone."""
        raise NotImplementedError

    def encode(self, joints: np.ndarray, weights: np.ndarray, heatmap_size: tuple[int, int],
               scale: tuple[float, float], sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """(J, h, w) float32 targets and (J, 1) weights for joints (J, 2) in input-crop pixels, `scale` crop
        pixels per heatmap pixel (`heatmap_scale`); a joint whose target misses the heatmap gets weight 0."""
        raise NotImplementedError


def gaussian_heatmaps(
        joints: np.ndarray, weights: np.ndarray, heatmap_size: tuple[int, int], stride: float | tuple[float, float],
        sigma: float = 2.0, unbiased: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(J, h, w) float32 targets and (J, 1) weights for joints (J, 2) in input-crop pixels, `stride` crop pixels per
    heatmap pixel (per axis, or one for both).

    The official JointsDataset's targets: a Gaussian (peak 1) at the joint / stride rounded to the nearest heatmap
    pixel, cut at 3 sigma, weight 0 (and no target) where that square lies wholly outside the heatmap. With
    `unbiased` (DARK): centred at the exact joint / stride and not cut; weight 0 where the square from
    joint - 3 sigma to joint + 3 sigma + 1 misses the heatmap (as mmpose decides it). Given weights of 0 stay 0.
    """
    height, width = heatmap_size
    points = np.asarray(joints, dtype=np.float64) / np.asarray(stride, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float32).reshape(-1).copy()
    radius = sigma * 3 if unbiased else int(sigma * 3)
    centres = points if unbiased else np.floor(points + 0.5)
    low, high = centres - radius, centres + radius + (1 if unbiased else 0)
    outside = ((low[:, 0] >= width) | (low[:, 1] >= height) | (high[:, 0] < 0) | (high[:, 1] < 0))
    weights[outside] = 0
    dx = np.arange(width)[None, :] - centres[:, :1]
    dy = np.arange(height)[None, :] - centres[:, 1:]
    gx = np.exp(-dx ** 2 / (2 * sigma ** 2))
    gy = np.exp(-dy ** 2 / (2 * sigma ** 2))
    if not unbiased:
        gx, gy = np.where(np.abs(dx) <= radius, gx, 0.0), np.where(np.abs(dy) <= radius, gy, 0.0)
    target = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)
    target[weights == 0] = 0
    return target, weights[:, None]


@dataclass(frozen=True)
class OfficialCodec(PoseCodec):
    """deep-high-resolution-net's rule (module docstring)."""

    name: ClassVar[str] = 'official'

    def locate(self, heatmaps: Tensor, refine: bool = True) -> tuple[Tensor, Tensor]:
        coords, maxvals = get_max_preds(heatmaps)
        return (_quarter_shift(heatmaps, coords, per_axis=False) if refine else coords), maxvals

    def encode(self, joints: np.ndarray, weights: np.ndarray, heatmap_size: tuple[int, int],
               scale: tuple[float, float], sigma: float) -> tuple[np.ndarray, np.ndarray]:
        return gaussian_heatmaps(joints, weights, heatmap_size, scale, sigma)


@dataclass(frozen=True)
class MMPoseCodec(OfficialCodec):
    """mmpose 1.x's plain MSRAHeatmap decoding (module docstring); the official targets."""

    name: ClassVar[str] = 'mmpose'

    def locate(self, heatmaps: Tensor, refine: bool = True) -> tuple[Tensor, Tensor]:
        coords, maxvals = _argmax_or_minus_one(heatmaps)
        return (_quarter_shift(heatmaps, coords, per_axis=True) if refine else coords), maxvals


@dataclass(frozen=True)
class OfficialFaceCodec(OfficialCodec):
    """HRNet-Facial-Landmark-Detection's decoding (module docstring); the official targets."""

    name: ClassVar[str] = 'official-face'
    flip_test_default: ClassVar[bool] = False

    def locate(self, heatmaps: Tensor, refine: bool = True) -> tuple[Tensor, Tensor]:
        coords, maxvals = get_max_preds(heatmaps)
        coords = coords.masked_fill((maxvals <= 0).unsqueeze(-1), -1.0)
        if not refine:
            return coords, maxvals
        height, width = heatmaps.shape[-2:]
        px, py = coords[..., 0].long(), coords[..., 1].long()
        inner = (px >= 1) & (px <= width - 2) & (py >= 1) & (py <= height - 2)
        diff = torch.stack([_at(heatmaps, px + 1, py) - _at(heatmaps, px - 1, py),
                            _at(heatmaps, px, py + 1) - _at(heatmaps, px, py - 1)], dim=-1)
        return coords + torch.sign(diff) * 0.25 * inner.unsqueeze(-1) + 0.5, maxvals

    def to_image(self, points: Tensor) -> Tensor:
        return torch.trunc(points) + 1


def _quarter_shift(heatmaps: Tensor, coords: Tensor, per_axis: bool) -> Tensor:
    """A quarter pixel toward the larger neighbour on each axis, where the rule allows (module docstring)."""
    height, width = heatmaps.shape[-2:]
    px = torch.floor(coords[..., 0] + 0.5).long()
    py = torch.floor(coords[..., 1] + 0.5).long()
    x_inner, y_inner = (px > 1) & (px < width - 1), (py > 1) & (py < height - 1)
    if per_axis:
        shift_x = x_inner & (py > 0) & (py < height)
        shift_y = y_inner & (px > 0) & (px < width)
    else:
        shift_x = shift_y = x_inner & y_inner
    diff = torch.stack([_at(heatmaps, px + 1, py) - _at(heatmaps, px - 1, py),
                        _at(heatmaps, px, py + 1) - _at(heatmaps, px, py - 1)], dim=-1)
    return coords + torch.sign(diff) * 0.25 * torch.stack([shift_x, shift_y], dim=-1)


def _check_kernel(kernel: int | None) -> None:
    if kernel is not None and (isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1
                               or kernel % 2 == 0):
        raise ValueError(f'the blur kernel size must be a positive odd integer, got {kernel!r}')


@dataclass(frozen=True)
class DarkCodec(PoseCodec):
    """DARK (module docstring); `blur_kernel` None means mmpose's default, 11."""

    name: ClassVar[str] = 'dark'
    blur_kernel: int | None = None

    def __post_init__(self) -> None:
        _check_kernel(self.blur_kernel)

    @property
    def spec(self) -> str:
        return self.name if self.blur_kernel is None else f'{self.name}:{self.blur_kernel}'

    @property
    def kernel(self) -> int:
        return self.blur_kernel or DEFAULT_BLUR_KERNEL

    def locate(self, heatmaps: Tensor, refine: bool = True) -> tuple[Tensor, Tensor]:
        heatmaps = heatmaps.float()
        coords, maxvals = _argmax_or_minus_one(heatmaps)
        if not refine:
            return coords, maxvals
        blurred = gaussian_blur(heatmaps, self.kernel)
        blurred = blurred * (maxvals / blurred.flatten(2).amax(-1))[..., None, None]  # keeps each map's maximum
        logs = blurred.clamp(min=1e-10).log()
        height, width = heatmaps.shape[-2:]
        x, y = coords[..., 0].long(), coords[..., 1].long()

        def value(dx: int, dy: int) -> Tensor:
            return _at(logs, x + dx, y + dy)

        centre = value(0, 0)
        dx = 0.5 * (value(1, 0) - value(-1, 0))
        dy = 0.5 * (value(0, 1) - value(0, -1))
        dxx = 0.25 * (value(2, 0) - 2 * centre + value(-2, 0))
        dxy = 0.25 * (value(1, 1) - value(1, -1) - value(-1, 1) + value(-1, -1))
        dyy = 0.25 * (value(0, 2) - 2 * centre + value(0, -2))
        step = (x > 1) & (x < width - 2) & (y > 1) & (y < height - 2) & (dxx * dyy - dxy * dxy != 0)
        # the references invert the float32 Hessian in float64 (numpy.linalg) and apply it in float32
        det = dxx.double() * dyy.double() - dxy.double() ** 2
        det = torch.where(step, det, torch.ones_like(det))
        inverse = [(dyy.double() / det).float(), (-dxy.double() / det).float(), (dxx.double() / det).float()]
        offset = torch.stack([-(inverse[0] * dx + inverse[1] * dy), -(inverse[1] * dx + inverse[2] * dy)], dim=-1)
        return coords + offset * step.unsqueeze(-1), maxvals

    def encode(self, joints: np.ndarray, weights: np.ndarray, heatmap_size: tuple[int, int],
               scale: tuple[float, float], sigma: float) -> tuple[np.ndarray, np.ndarray]:
        return gaussian_heatmaps(joints, weights, heatmap_size, scale, sigma, unbiased=True)


@dataclass(frozen=True)
class UDPCodec(PoseCodec):
    """UDP (module docstring). `mmpose0_blur`: blur as mmpose 0.x did (in place, mirrored border, not rescaled);
    None means mmpose 1.x's blur, stated or not. `blur_kernel` None means 11."""

    name: ClassVar[str] = 'udp'
    shift_flip: ClassVar[bool] = False
    unbiased_grid: ClassVar[bool] = True
    blur_kernel: int | None = None
    mmpose0_blur: bool | None = None

    def __post_init__(self) -> None:
        _check_kernel(self.blur_kernel)

    @property
    def spec(self) -> str:
        name = self.name + {None: '', True: '-mmpose0', False: '-mmpose1'}[self.mmpose0_blur]
        return name if self.blur_kernel is None else f'{name}:{self.blur_kernel}'

    @property
    def kernel(self) -> int:
        return self.blur_kernel or DEFAULT_BLUR_KERNEL

    def locate(self, heatmaps: Tensor, refine: bool = True) -> tuple[Tensor, Tensor]:
        heatmaps = heatmaps.float()
        coords, maxvals = _argmax_or_minus_one(heatmaps)
        if not refine:
            return coords, maxvals
        if self.mmpose0_blur:
            blurred = gaussian_blur(heatmaps, self.kernel, border='reflect101')
        else:
            blurred = gaussian_blur(heatmaps, self.kernel)
            blurred = blurred * (maxvals / blurred.flatten(2).amax(-1))[..., None, None]
        logs = F.pad(blurred.clamp(1e-3, 50).log(), (1, 1, 1, 1), mode='replicate')
        count, joints, height, width = logs.shape
        # the references index the edge-padded maps of one person flattened, wrapping around for the (-1, -1) of
        # a heatmap without a positive value; so does this
        flat = logs.reshape(count, -1)
        base = (coords[..., 0] + 1 + (coords[..., 1] + 1) * width).long()
        base = base + height * width * torch.arange(joints, device=logs.device)

        def value(offset: int) -> Tensor:
            return flat.gather(1, (base + offset) % flat.shape[1])

        centre, right, down, left, up = value(0), value(1), value(width), value(-1), value(-width)
        dx = 0.5 * (right - left)
        dy = 0.5 * (down - up)
        dxx = right - 2 * centre + left
        dyy = down - 2 * centre + up
        dxy = 0.5 * (value(width + 1) - right - down + centre + centre - left - up + value(-width - 1))
        eps = float(np.finfo(np.float32).eps)  # the references regularise the Hessian before inverting it
        a, b, d = dxx.double() + eps, dxy.double(), dyy.double() + eps
        det = a * d - b * b
        offset = torch.stack([(d * dx - b * dy) / det, (a * dy - b * dx) / det], dim=-1)
        return (coords.double() - offset).float(), maxvals

    def encode(self, joints: np.ndarray, weights: np.ndarray, heatmap_size: tuple[int, int],
               scale: tuple[float, float], sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Gaussians centred at the exact joint, cut to the 3-sigma square around the rounded one."""
        height, width = heatmap_size
        points = np.asarray(joints, dtype=np.float64) / np.asarray(scale, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float32).reshape(-1).copy()
        radius = sigma * 3
        centres = np.trunc(points + 0.5)  # mmpose rounds by casting to int
        outside = ((centres[:, 0] - radius >= width) | (centres[:, 1] - radius >= height)
                   | (centres[:, 0] + radius + 1 < 0) | (centres[:, 1] + radius + 1 < 0))
        weights[outside] = 0
        dx = np.arange(width)[None, :] - points[:, :1]
        dy = np.arange(height)[None, :] - points[:, 1:]
        window_x = np.abs(np.arange(width)[None, :] - centres[:, :1]) <= radius
        window_y = np.abs(np.arange(height)[None, :] - centres[:, 1:]) <= radius
        gx = np.where(window_x, np.exp(-dx ** 2 / (2 * sigma ** 2)), 0.0)
        gy = np.where(window_y, np.exp(-dy ** 2 / (2 * sigma ** 2)), 0.0)
        target = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)
        target[weights == 0] = 0
        return target, weights[:, None]


_CODECS: dict[str, tuple[type[PoseCodec], dict]] = {
    'official': (OfficialCodec, {}),
    'mmpose': (MMPoseCodec, {}),
    'dark': (DarkCodec, {}),
    'udp': (UDPCodec, {}),
    'udp-mmpose0': (UDPCodec, dict(mmpose0_blur=True)),
    'udp-mmpose1': (UDPCodec, dict(mmpose0_blur=False)),
    'official-face': (OfficialFaceCodec, {}),
}
CODEC_NAMES = tuple(_CODECS)


def parse_codec(spec: str | PoseCodec, where: str = 'codec') -> PoseCodec:
    """The codec a spec string names (module docstring): name, optionally ':' and the blur kernel size."""
    if isinstance(spec, PoseCodec):
        return spec
    name, _, kernel = str(spec).strip().lower().partition(':')
    if name not in _CODECS:
        raise ValueError(f'{where} must be one of {", ".join(CODEC_NAMES)} (optionally :<blur kernel>), got {spec!r}')
    cls, fields = _CODECS[name]
    if kernel:
        if 'blur_kernel' not in {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f'{where}: {name} has no blur kernel, got {spec!r}')
        if not kernel.isdigit():
            raise ValueError(f'{where}: the blur kernel size must be a positive odd integer, got {spec!r}')
        fields = dict(fields, blur_kernel=int(kernel))
    try:
        return cls(**fields)
    except ValueError as error:
        raise ValueError(f'{where}: {error}') from error


def resolve_codec(requested: str | PoseCodec | None, found: str, evidence: str | None, source: str) -> PoseCodec:
    """The codec to decode a checkpoint with: `requested` (an argument, a saved config) merged with what the file
    says (`found`, known from `evidence` such as its name or meta config; without evidence only its layout speaks,
    and a request overrides it). A request of another rule than the evidence shows, or a detail (blur kernel,
    mmpose generation) that contradicts it, is a ValueError naming both."""
    detected = parse_codec(found, f'{source}: codec')
    if requested is None:
        return detected
    wanted = parse_codec(requested)
    if evidence is None:
        return wanted
    if type(wanted) is not type(detected):
        raise ValueError(f'{source} is a {detected.spec} heatmap checkpoint ({evidence}); codec {wanted.spec} '
                         'does not fit it')
    merged = {}
    for field in dataclasses.fields(wanted):
        mine, theirs = getattr(wanted, field.name), getattr(detected, field.name)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f'{source} is a {detected.spec} heatmap checkpoint ({evidence}); codec {wanted.spec} '
                             'contradicts it')
        merged[field.name] = mine if mine is not None else theirs
    return type(wanted)(**merged)


def decode_heatmaps(
        heatmaps: Tensor, centers: Tensor, sizes: Tensor, post_process: bool = True,
        codec: PoseCodec | str = 'official',
) -> tuple[Tensor, Tensor]:
    """Keypoints in image pixels and their scores from (N, J, h, w) heatmaps of crops of boxes with `centers` and
    `sizes` (P, 2), by `codec`'s rule (`post_process` False: the integer argmax alone); the heatmap grid is
    laid over the box by the codec's `frame`."""
    codec = parse_codec(codec)
    coords, maxvals = codec.locate(heatmaps, post_process)
    origin, step = codec.frame(sizes, tuple(heatmaps.shape[-2:]))
    return codec.to_image(centers[:, None, :] + (coords - origin) * step[:, None, :]), maxvals

