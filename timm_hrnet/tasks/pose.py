"""Top-down human pose estimation with HRNet (Sun et al., "Deep High-Resolution Representation Learning for Human
Pose Estimation", CVPR 2019), computing what the official `pose_hrnet` computes, on the shared `HRNetTrunk`.

The last module of stage 4 fuses into the highest-resolution branch only (`spec.multi_scale_output=False`) and
`final_layer` maps it to one heatmap per joint at stride 4. Around the network, this module does what the official
evaluation does: person boxes are widened to the input's aspect ratio and padded by 1.25, cropped with a bilinear
affine warp, the flip test averages the heatmaps of the mirrored crop (left/right joints swapped, shifted by one
heatmap column), and heatmaps are decoded by argmax with a quarter-pixel shift toward the larger neighbour and
mapped back into the image. Checkpoints trained with another heatmap codec (mmpose's plain rule, DARK, UDP) crop,
flip and decode by theirs (`model.codec`, `timm_hrnet.tasks.pose_codecs`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import POSE, Checkpoint, CheckpointSource, check_task, read_checkpoint
from ..checkpoints.architecture import HRNETV2
from ..fused import InferenceOnlyModel, register_inference_only
from ..images import ImageInput
from ..necks import HRNetV2
from ..variants import HRNetSpec
from .base import HRNetTaskModel, load_task_weights
from .datasets import KeypointInfo, keypoints_for
from .detection import DetectorLike, detect_people
from .pose_codecs import PoseCodec, decode_heatmaps, get_max_preds, parse_codec, resolve_codec
from .saved_config import config_beside

__all__ = [
    'HRNetPose', 'create_pose_model', 'box_to_center_size', 'crop_boxes', 'flip_back', 'flip_order',
    'flip_test_heatmaps', 'get_max_preds', 'decode_heatmaps', 'DEFAULT_INPUT_SIZE', 'HEATMAP_STRIDE', 'BOX_PADDING',
]

DEFAULT_INPUT_SIZE = (256, 192)  # (height, width) of the COCO W32 / W48 256x192 models
LANDMARK_INPUT_SIZE = (256, 256)  # the face and hand landmark models (HRNetV2-W18) of both references
HEATMAP_STRIDE = 4
BOX_PADDING = 1.25  # the official COCO pipeline enlarges every person box by this factor
SIMPLE = 'simple'  # pose_hrnet's head: one conv on the highest-resolution branch
POSE_HEADS = (SIMPLE, HRNETV2)


class HRNetPose(HRNetTaskModel):
    """HRNet keypoint model: `forward` maps (N, C, H, W) crops to (N, J, H/4, W/4) joint heatmaps.

    `spec` normally has `multi_scale_output=False` (the official pose layout); with True the other branches are
    computed and unused. `input_size` is the (height, width) of the person crops `predict` feeds the network
    (not stored in checkpoints: 256x192 and 384x288 models have the same tensors). `keypoint_info` names the joints
    and gives the flip pairs; by default the COCO (17), MPII (16) or COCO-WholeBody (133) set that fits `num_joints`;
    `codec` is the heatmap codec the weights were trained with (a `PoseCodec` or its spec, e.g. 'official',
    'mmpose', 'dark:17', 'udp'; `timm_hrnet.tasks.pose_codecs`): it decides the crop, the flip test's shift and the
    decoding. `head` is 'simple' (pose_hrnet: `final_layer` on the highest-resolution branch) or 'hrnetv2' (the
    face and hand landmark models of HRNet-Facial-Landmark-Detection and mmpose: the four branches upsampled and
    concatenated, `head` = 1x1 conv + BN + ReLU + conv to the heatmaps; `spec` must output all branches).
    """

    def __init__(
            self,
            spec: HRNetSpec,
            num_joints: int = 17,
            final_conv_kernel: int = 1,
            in_chans: int = 3,
            input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
            keypoint_info: KeypointInfo | None = None,
            drop_path_rate: float = 0.0,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            codec: PoseCodec | str = 'official',
            head: str = SIMPLE,
    ) -> None:
        codec = parse_codec(codec)
        if head not in POSE_HEADS:
            raise ValueError(f'head must be one of {", ".join(POSE_HEADS)}, got {head!r}')
        if head == HRNETV2 and not spec.multi_scale_output:
            raise ValueError('the hrnetv2 pose head concatenates all branches: spec.multi_scale_output must be True')
        if final_conv_kernel not in (1, 3):
            raise ValueError(f'final_conv_kernel must be 1 or 3 (the official heads), got {final_conv_kernel}')
        if len(input_size) != 2 or min(input_size) < 32:
            raise ValueError(f'input_size must be (height, width) of at least 32x32, got {tuple(input_size)}')
        keypoint_info = keypoint_info or keypoints_for(num_joints)
        if keypoint_info is not None and keypoint_info.num_joints != num_joints:
            raise ValueError(f'keypoint set {keypoint_info.name!r} has {keypoint_info.num_joints} joints, '
                             f'the model {num_joints}')
        super().__init__(spec, in_chans, drop_path_rate=drop_path_rate, device=device, dtype=dtype)
        self.num_joints = num_joints
        self.final_conv_kernel = final_conv_kernel
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.keypoint_info = keypoint_info
        self.codec = codec
        self.head_type = head
        dd = dict(device=device, dtype=dtype)
        # the head the checkpoint has, the other attributes None (TorchScript compiles only the branch taken)
        self.final_layer: nn.Conv2d | None = None
        self.neck: HRNetV2 | None = None
        self.head: nn.Sequential | None = None
        if head == SIMPLE:
            self.final_layer = nn.Conv2d(self.branch_channels[0], num_joints, final_conv_kernel,
                                         padding=final_conv_kernel // 2, **dd)
        else:
            self.neck = HRNetV2(self.branch_channels)
            width = self.neck.out_channels
            self.head = nn.Sequential(
                nn.Conv2d(width, width, 1, **dd), nn.BatchNorm2d(width, **dd), nn.ReLU(inplace=True),
                nn.Conv2d(width, num_joints, final_conv_kernel, padding=final_conv_kernel // 2, **dd))
        self.init_weights()

    def output_conv(self) -> nn.Conv2d:
        return self.final_layer if self.final_layer is not None else self.head[3]

    @torch.jit.unused
    def head_prefix(self) -> str:
        """The state-dict prefix of the conv to the heatmaps (re-initialised for another joint count)."""
        return 'final_layer.' if self.head_type == SIMPLE else 'head.3.'

    def forward(self, x: Tensor) -> Tensor:
        branches = self.forward_branches(self.forward_stem(x))
        if self.final_layer is not None:
            return self.final_layer(branches[0])
        else:
            return self.head(self.neck(branches))

    def forward_flip(self, x: Tensor, flip_pairs: Sequence[tuple[int, int]] | None = None,
                     shift: bool | None = None) -> Tensor:
        """The flip test (`flip_test_heatmaps`) with the model's flip pairs (or `flip_pairs`) and its codec's shift
        (or `shift`)."""
        if flip_pairs is None and self.keypoint_info is None:
            raise ValueError(f'no flip pairs known for {self.num_joints} joints: pass keypoint_info to the model')
        pairs = self.keypoint_info.flip_pairs if flip_pairs is None else flip_pairs
        return flip_test_heatmaps(self, x, pairs, self.codec.shift_flip if shift is None else shift)

    def forward_keypoints(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keypoints (N, J, 2) in the pixels of the (N, C, H, W) crops and their scores (N, J), decoded by the
        model's codec without the flip test: what `export(..., decode=True)` writes as a graph. A keypoint at crop
        pixel (u, v) is image point centre + ((u, v) - origin) * step of the codec's `frame` over the crop's box."""
        heatmaps = self(x)
        coords, scores = self.codec.locate(heatmaps)
        scale = self.codec.heatmap_scale(tuple(x.shape[-2:]), tuple(heatmaps.shape[-2:]))
        return coords * coords.new_tensor(scale), scores

    def crop(self, image: Tensor, centers: Tensor, sizes: Tensor) -> Tensor:
        """The network's input crops of these boxes (`crop_boxes` with the model's input size and codec)."""
        return crop_boxes(image, centers, sizes, self.input_size, self.codec)

    @torch.no_grad()
    def predict(
            self,
            image: ImageInput,
            boxes: Tensor | Sequence[Sequence[float]] | None = None,
            flip_test: bool | None = None,
            post_process: bool = True,
            detector: DetectorLike | None = None,
    ) -> dict[str, Any]:
        """Keypoints of the people in `image`, one per box (x, y, width, height[, score] in pixels).

        The boxes are given, or found by `detector` (a `timm_hrnet.tasks.detection.PersonDetector`, a torchvision
        detection model, or a callable image -> boxes), or default to the whole image. Returns `keypoints` (P, J, 2)
        in image pixels, `scores` (P, J) (the heatmap maxima), `boxes` (P, 4), `box_scores` (P,) and
        `keypoint_names`. The flip test runs by default when the flip pairs are known and the codec's reference runs
        it (not the official face code's). Runs in eval mode.
        """
        return self.predict_batch([image], None if boxes is None else [boxes], flip_test, post_process, detector)[0]

    @torch.no_grad()
    def predict_batch(
            self,
            images: Sequence[ImageInput],
            boxes: Sequence[Tensor | Sequence[Sequence[float]] | None] | None = None,
            flip_test: bool | None = None,
            post_process: bool = True,
            detector: DetectorLike | None = None,
            batch_size: int = 64,
    ) -> list[dict[str, Any]]:
        """`predict` for several images (video frames), running the crops of all their people `batch_size` at a
        time; one result per image, a detector run on all images at once."""
        if boxes is not None and detector is not None:
            raise ValueError('give person boxes or a detector, not both')
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f'{len(images)} images but boxes for {len(boxes)}')
        pixels = [self.load_pixels(image) for image in images]
        if detector is not None:
            boxes = detect_people(detector, [p if p.shape[0] == 3 else p[:1].expand(3, -1, -1) for p in pixels])
        per_image = [
            _as_boxes(None if boxes is None else boxes[k], p.shape[-1], p.shape[-2], detector is not None)
            for k, p in enumerate(pixels)
        ]
        aspect = self.input_size[1] / self.input_size[0]
        geometry = [box_to_center_size(b[:, :4].to(p.device), aspect) for b, p in zip(per_image, pixels)]
        crops = [self.crop(p, c, s) for p, (c, s) in zip(pixels, geometry)]
        if flip_test is None:
            flip_test = self.keypoint_info is not None and self.codec.flip_test_default
        heatmaps = self._heatmaps(torch.cat(crops), flip_test, batch_size)
        names = self.keypoint_info.keypoint_names if self.keypoint_info else tuple(
            f'joint_{j}' for j in range(self.num_joints))
        results, start = [], 0
        for image_boxes, (centers, sizes) in zip(per_image, geometry):
            count = len(image_boxes)
            keypoints, scores = decode_heatmaps(heatmaps[start:start + count], centers, sizes, post_process,
                                                self.codec)
            start += count
            results.append(dict(keypoints=keypoints.cpu(), scores=scores.cpu(), boxes=image_boxes[:, :4].clone(),
                                box_scores=image_boxes[:, 4].clone(), keypoint_names=names))
        return results

    def _heatmaps(self, crops: Tensor, flip_test: bool, batch_size: int) -> Tensor:
        """Float heatmaps of (N, C, h, w) crops in [0, 1], normalised and run `batch_size` at a time."""
        out_size = (self.input_size[0] // HEATMAP_STRIDE, self.input_size[1] // HEATMAP_STRIDE)
        if len(crops) == 0:
            return crops.new_zeros(0, self.num_joints, *out_size)
        with self.evaluating():
            chunks = [self.normalize(chunk) for chunk in crops.split(batch_size)]
            return torch.cat([(self.forward_flip(c) if flip_test else self(c)).float() for c in chunks])

    def task_config(self) -> dict[str, Any]:
        """What a published repo's config.json needs to rebuild and run this model (JSON-serialisable)."""
        return dict(
            task=POSE,
            num_joints=self.num_joints,
            input_size=[self.in_chans, *self.input_size],
            heatmap_stride=HEATMAP_STRIDE,
            final_conv_kernel=self.final_conv_kernel,
            keypoints=self.keypoint_info.name if self.keypoint_info else None,
            flip_pairs=[list(p) for p in self.keypoint_info.flip_pairs] if self.keypoint_info else [],
            codec=self.codec.spec,
            head=self.head_type,
            **self.base_config(),
        )


def _as_boxes(boxes: Tensor | Sequence[Sequence[float]] | None, width: int, height: int,
              detected: bool = False) -> Tensor:
    """(P, 5) rows of x, y, width, height, score (1 where not given); the whole image for None."""
    if boxes is None:
        return torch.tensor([[0.0, 0.0, float(width), float(height), 1.0]])
    boxes = torch.as_tensor(boxes, dtype=torch.float32).cpu()
    if boxes.ndim == 1:
        boxes = boxes.unsqueeze(0)
    if detected and boxes.numel() == 0:
        return boxes.reshape(0, 5)
    if boxes.ndim != 2 or boxes.shape[1] not in (4, 5) or len(boxes) == 0:
        raise ValueError(f'boxes must be (P, 4) rows of x, y, width, height (and a score); got shape '
                         f'{list(boxes.shape)}')
    if not (boxes[:, 2:4] > 0).all():
        raise ValueError(f'boxes need a positive width and height, got {boxes.tolist()}')
    return boxes if boxes.shape[1] == 5 else torch.cat([boxes, torch.ones(len(boxes), 1)], dim=1)


def box_to_center_size(boxes: Tensor, aspect_ratio: float, padding: float = BOX_PADDING) -> tuple[Tensor, Tensor]:
    """Box centres and crop sizes in pixels: (x, y, w, h) boxes widened or heightened to `aspect_ratio` (w / h)
    and enlarged by `padding`, as the official COCO pipeline does."""
    x, y, w, h = boxes.unbind(-1)
    centers = torch.stack([x + w * 0.5, y + h * 0.5], dim=-1)
    wider = w > aspect_ratio * h
    taller = w < aspect_ratio * h
    h = torch.where(wider, w / aspect_ratio, h)
    w = torch.where(taller, h * aspect_ratio, w)
    return centers, torch.stack([w, h], dim=-1) * padding


def crop_boxes(image: Tensor, centers: Tensor, sizes: Tensor, output_size: tuple[int, int],
               codec: PoseCodec | str = 'official') -> Tensor:
    """(P, C, h, w) crops of a (C, H, W) image: output pixel (u, v) samples the image bilinearly at
    centre + ((u, v) - origin) * step, zero outside: the official affine warp (origin (w, h) / 2, step box width /
    w), or UDP's (origin (w - 1, h - 1) / 2, step box size / (size - 1)), as `codec.frame` says."""
    origin, step = parse_codec(codec).frame(sizes, output_size)
    out_h, out_w = output_size
    u = torch.arange(out_w, device=image.device, dtype=torch.float32) - origin[0]
    v = torch.arange(out_h, device=image.device, dtype=torch.float32) - origin[1]
    return warp_grid(image, centers[:, 0:1] + u * step[:, 0:1], centers[:, 1:2] + v * step[:, 1:2])


def warp_grid(image: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """(P, C, h, w) bilinear samples of a (C, H, W) image at the points (xs[p, u], ys[p, v]) (or, for (P, h, w)
    xs and ys, at (xs[p, v, u], ys[p, v, u])), pixel i sitting at coordinate i, zero outside: the crop warp of
    inference, evaluation and training."""
    height, width = image.shape[-2:]
    if xs.ndim == 2:
        count, out_h, out_w = len(xs), ys.shape[1], xs.shape[1]
        xs, ys = xs[:, None, :].expand(count, out_h, out_w), ys[:, :, None].expand(count, out_h, out_w)
    # pixel centres in grid_sample's align_corners=False coordinates: pixel i is at (2i + 1) / size - 1
    grid = torch.stack([(2 * xs + 1) / width - 1, (2 * ys + 1) / height - 1], -1)
    batch = image.unsqueeze(0).expand(len(xs), -1, -1, -1)
    return F.grid_sample(batch, grid.to(image.dtype), mode='bilinear', padding_mode='zeros', align_corners=False)


def flip_order(num_joints: int, flip_pairs: Sequence[tuple[int, int]]) -> list[int]:
    """The joint order of a mirrored person: each left joint swapped with its right one."""
    order = list(range(num_joints))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    return order


def flip_back(heatmaps: Tensor, flip_pairs: Sequence[tuple[int, int]]) -> Tensor:
    """Heatmaps of a mirrored input, mirrored back, with left and right joints swapped."""
    return heatmaps.flip(-1)[:, flip_order(heatmaps.shape[1], flip_pairs)]


def flip_test_heatmaps(network: nn.Module, x: Tensor, flip_pairs: Sequence[tuple[int, int]],
                       shift: bool = True) -> Tensor:
    """The flip test of predict, evaluation and the pose CLI: `network`'s heatmaps of `x` averaged with those of the
    mirrored input, flipped back and, with `shift` (the plain and DARK codecs, not UDP), shifted by one column (the
    plain crop's mirrored stride-4 grid is one heatmap pixel off)."""
    flipped = flip_back(network(x.flip(-1)), flip_pairs)
    if shift:
        flipped[..., 1:] = flipped[..., :-1].clone()
    return (network(x) + flipped) * 0.5


_SIZE_IN_NAME = re.compile(r'(?<!\d)(\d{2,4})x(\d{2,4})(?!\d)')


def input_size_from_name(path: Path | None) -> tuple[int, int] | None:
    """(height, width) from a released file name such as pose_hrnet_w48_384x288.pth or mmpose's
    td-hm_hrnet-w32_8xb64-210e_coco-256x192-81c58e40_20220909.pth."""
    match = _SIZE_IN_NAME.search(path.stem) if path is not None else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def create_pose_model(
        checkpoint: CheckpointSource | Checkpoint,
        num_joints: int | None = None,
        input_size: tuple[int, int] | None = None,
        keypoint_info: KeypointInfo | None = None,
        device: torch.device | str | None = None,
        codec: PoseCodec | str | None = None,
) -> HRNetPose:
    """An `HRNetPose` with the architecture and weights of a pose checkpoint: official pose_hrnet or mmpose's
    top-down heatmap HRNet (1.x and 0.x); a path, an https URL, a state dict or a `Checkpoint`.

    `num_joints` different from the checkpoint's gives a freshly initialised head (the rest is loaded) for
    fine-tuning. What the weights do not store comes from the arguments, else from the config.json that
    `train_pose` / `hub_upload` wrote beside them (keypoint set with its flip pairs and sigmas, input size,
    codec), else: `input_size` from a released file name (``..._384x288.pth``) or 256x192 (landmark models:
    256x256), the keypoint set by
    joint count, the `codec` from the file (`Checkpoint.codec`: DARK / UDP by mmpose's file name or the config in
    its meta, with its blur kernel; else mmpose's plain rule for mmpose files, the official one otherwise). A codec
    that contradicts what the file says is a ValueError. Eval mode.
    """
    loaded = read_checkpoint(checkpoint)
    check_task(loaded.task, POSE, loaded.source)
    arch = loaded.architecture
    joints = arch.num_outputs if num_joints is None else num_joints
    config = config_beside(loaded.path, POSE, arch.num_outputs)
    if keypoint_info is None and config is not None and joints == arch.num_outputs:
        keypoint_info = config.keypoints
    configured_size = config.input_size if config is not None else None
    default_size = LANDMARK_INPUT_SIZE if arch.head == HRNETV2 else DEFAULT_INPUT_SIZE
    size = input_size or configured_size or input_size_from_name(loaded.path) or default_size
    requested = codec or (config.codec if config is not None else None)
    resolved = resolve_codec(requested, loaded.codec or 'official', loaded.codec_evidence, loaded.source)
    head = HRNETV2 if arch.head == HRNETV2 else SIMPLE
    model = HRNetPose(arch.spec, joints, arch.final_conv_kernel, arch.in_chans, size, keypoint_info, codec=resolved,
                      head=head)
    load_task_weights(model, loaded, reinit_prefixes=(model.head_prefix(),) if joints != arch.num_outputs else ())
    return model.to(device).eval()


@register_inference_only(HRNetPose)
class InferenceOnlyHRNetPose(InferenceOnlyModel, HRNetPose):
    """A fused pose model (module level, so fused pose models pickle and `torch.save` whole)."""
