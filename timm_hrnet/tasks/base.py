"""What the pose and segmentation models share: the HRNet trunk, the normalisation of the official models, head
initialisation, the eval-mode scaffolding of `predict`, strict weight loading and the bilinear resize rule."""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import Checkpoint, CheckpointMismatchError, key_differences
from ..hrnet import HRNetTrunk
from ..images import ImageInput, image_to_tensor
from ..variants import HRNetSpec

__all__ = ['HRNetTaskModel', 'IMAGENET_MEAN', 'IMAGENET_STD', 'normalization', 'init_head_conv', 'resize',
           'load_task_weights']

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # both official code bases normalise RGB images with ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
_BN_COUNTER = '.num_batches_tracked'


def normalization(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per channel: ImageNet's for RGB, otherwise their averages repeated (timm's convention)."""
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,) * in_chans, (sum(IMAGENET_STD) / 3,) * in_chans


def init_head_conv(conv: nn.Conv2d) -> None:
    """The official initialisation of a task's output conv (normal, std 0.001; zero bias), e.g. before fine-tuning."""
    nn.init.normal_(conv.weight, std=0.001)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def resize(x: Tensor, size: list[int] | tuple[int, int] | torch.Size, align_corners: bool) -> Tensor:
    """Bilinear resize with the model's `align_corners`: the one rule for every resize a task model makes."""
    return F.interpolate(x, size=size, mode='bilinear', align_corners=align_corners)


class HRNetTaskModel(HRNetTrunk):
    """An HRNet trunk with a dense-prediction head: pose heatmaps or segmentation logits.

    Subclasses build their head, then call `init_weights`; `output_conv` names the conv `reset_head` re-initialises.
    """

    def __init__(
            self,
            spec: HRNetSpec,
            in_chans: int = 3,
            drop_path_rate: float = 0.0,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(spec, in_chans, drop_path_rate=drop_path_rate, device=device, dtype=dtype)
        self.mean, self.std = normalization(in_chans)

    def output_conv(self) -> nn.Conv2d:
        raise NotImplementedError

    def init_weights(self) -> None:
        super().init_weights()
        self.reset_head()

    def reset_head(self) -> None:
        """The official initialisation of the output conv (normal, std 0.001; zero bias), e.g. before fine-tuning."""
        init_head_conv(self.output_conv())

    def load_pixels(self, image: ImageInput) -> Tensor:
        """An image as a float (C, H, W) tensor in [0, 1] on the model's device."""
        return image_to_tensor(image, self.in_chans).to(next(self.parameters()).device)

    def normalize(self, pixels: Tensor) -> Tensor:
        """(..., C, H, W) pixels in [0, 1] normalised as the model was trained, in the model's dtype."""
        reference = next(self.parameters())
        mean = torch.tensor(self.mean, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(-1, 1, 1)
        return ((pixels - mean) / std).to(reference.dtype)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode for the duration of a prediction, the previous mode restored after."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            if was_training:
                self.train()

    def base_config(self) -> dict[str, Any]:
        """The part of `task_config` every task has."""
        return dict(in_chans=self.in_chans, mean=list(self.mean), std=list(self.std),
                    architecture=dataclasses.asdict(self.spec))


def load_task_weights(model: nn.Module, checkpoint: Checkpoint, reinit_prefixes: tuple[str, ...] = ()) -> None:
    """Copy the checkpoint into `model`, which must take every tensor: missing, unexpected and mis-shaped keys are
    listed by name. Keys under `reinit_prefixes` (a head being replaced for fine-tuning) keep the model's init.
    BatchNorm step counters absent from old checkpoints are filled with zeros."""
    own = model.state_dict()
    state_dict = {k: v for k, v in checkpoint.state_dict.items() if not k.startswith(reinit_prefixes)}
    for key, value in own.items():
        if key.startswith(reinit_prefixes) or (key.endswith(_BN_COUNTER) and key not in state_dict):
            state_dict[key] = value
    missing, unexpected, mismatched = key_differences(state_dict, {k: v.shape for k, v in own.items()})
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(
            type(model).__name__, checkpoint.source, missing, unexpected, mismatched,
            hint='(the architecture is read from the checkpoint: keys that do not fit mean a different network)',
        )
    with torch.no_grad():
        model.load_state_dict(state_dict)
