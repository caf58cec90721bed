"""The official training losses: JointsMSELoss (pose) and cross-entropy with optional OHEM (segmentation)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['JointsMSELoss', 'SegCrossEntropy', 'OFFICIAL_OHEM_MIN_KEPT', 'OFFICIAL_OHEM_PIXELS',
           'CITYSCAPES_CLASS_WEIGHTS']

# the official Cityscapes configs keep at least 100000 pixels of a per-GPU batch of 3 crops of 512x1024
OFFICIAL_OHEM_MIN_KEPT = 100_000
OFFICIAL_OHEM_PIXELS = 3 * 512 * 1024
# the per-class loss weights of the official Cityscapes dataset class (lib/datasets/cityscapes.py), train-id order
CITYSCAPES_CLASS_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023, 0.9539,
                            0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)


class JointsMSELoss(nn.Module):
    """0.5 x the mean squared error of weighted heatmaps, averaged over joints (the official JointsMSELoss with
    use_target_weight): joints of weight 0 contribute nothing."""

    def forward(self, heatmaps: Tensor, target: Tensor, target_weight: Tensor) -> Tensor:
        weight = target_weight.unsqueeze(-1)  # (N, J, 1) -> (N, J, 1, 1)
        return 0.5 * ((heatmaps.float() - target) * weight).square().mean()


class SegCrossEntropy(nn.Module):
    """Cross-entropy of logits upsampled to the label size (bilinear, the model's align_corners, as the official
    loss), pixels labelled `ignore_index` left out, optionally with per-class weights (the official Cityscapes
    configs use some). With `ohem`, only the hard pixels count (OhemCrossEntropy): those whose softmax probability of
    their true class is below `threshold`, or below the `min_kept`-th lowest probability if that is higher;
    `min_kept` None keeps the official share (100000 of 3 x 512 x 1024 pixels) of each batch's pixels."""

    def __init__(self, ignore_index: int = 255, align_corners: bool = False, ohem: bool = False,
                 threshold: float = 0.7, min_kept: int | None = None,
                 class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.ohem = ohem
        self.threshold = threshold
        self.min_kept = min_kept
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer('class_weights', weight, persistent=False)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode='bilinear', align_corners=self.align_corners)
        logits = logits.float()
        valid = labels != self.ignore_index
        if not valid.any():
            return logits.sum() * 0  # keeps the graph (and DDP's gradient hooks) without a NaN
        if not self.ohem:
            return F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=self.ignore_index)
        pixel_loss = F.cross_entropy(logits, labels, weight=self.class_weights, ignore_index=self.ignore_index,
                                     reduction='none')[valid]
        with torch.no_grad():
            probability = logits.softmax(dim=1).gather(1, labels.clamp(max=logits.shape[1] - 1).unsqueeze(1))
            probability = probability.squeeze(1)[valid]
            min_kept = self.min_kept if self.min_kept is not None else round(
                OFFICIAL_OHEM_MIN_KEPT * labels.numel() / OFFICIAL_OHEM_PIXELS)
            kth = probability.sort().values[min(max(min_kept, 0), len(probability) - 1)]
            keep = probability < torch.clamp(kth, min=self.threshold)
        return pixel_loss[keep].mean() if keep.any() else pixel_loss.sum() * 0
