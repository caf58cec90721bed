"""Person boxes for the top-down pose model from torchvision's detection models, as the official demo and
mmpose's inferencer do: detector -> person boxes -> crops -> keypoints.

Any torchvision detection model works (Faster R-CNN, RetinaNet, FCOS, Keypoint/Mask R-CNN: they share the output
format, COCO category ids, person = 1); `person_detector(name)` builds one with its usual pretrained weights
(torchvision downloads them once into its cache) or with random weights for tests, and any callable mapping an
image tensor to boxes can stand in for it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ['PersonDetector', 'person_detector', 'detect_people', 'DetectorLike', 'COCO_PERSON']

COCO_PERSON = 1  # torchvision's COCO detection label of a person
DetectorLike = nn.Module | Callable[[Tensor], Tensor]


class PersonDetector:
    """A torchvision detection model turned into a function: (C, H, W) RGB image in [0, 1] -> (P, 5) person boxes
    (x, y, width, height, score), best first, keeping those scoring at least `score_threshold`."""

    def __init__(self, model: nn.Module, score_threshold: float = 0.5, label: int = COCO_PERSON,
                 max_people: int | None = None) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f'score_threshold must be in [0, 1], got {score_threshold}')
        self.model = model.eval()
        self.score_threshold = score_threshold
        self.label = label
        self.max_people = max_people

    @torch.inference_mode()
    def detect(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Person boxes of each image, one forward pass for the whole list."""
        device = next(self.model.parameters()).device
        outputs = self.model([image.to(device, torch.float32) for image in images])
        return [self._people(output) for output in outputs]

    def __call__(self, image: Tensor) -> Tensor:
        return self.detect([image])[0]

    def _people(self, output: dict[str, Tensor]) -> Tensor:
        keep = (output['labels'] == self.label) & (output['scores'] >= self.score_threshold)
        boxes, scores = output['boxes'][keep].float().cpu(), output['scores'][keep].float().cpu()
        order = scores.argsort(descending=True)[:self.max_people]
        xyxy, scores = boxes[order], scores[order]
        return torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2], scores[:, None]], dim=1)


def person_detector(
        name: str = 'fasterrcnn_resnet50_fpn_v2',
        weights: str | None = 'DEFAULT',
        score_threshold: float = 0.5,
        device: torch.device | str | None = None,
        **kwargs: object,
) -> PersonDetector:
    """A `PersonDetector` around `torchvision.models.get_model(name)`: with its `weights` ('DEFAULT', a weights
    enum name, or None for random weights, e.g. in tests; torchvision downloads pretrained ones on first use)."""
    import torchvision

    if name not in torchvision.models.list_models(torchvision.models.detection):
        known = ', '.join(torchvision.models.list_models(torchvision.models.detection))
        raise ValueError(f'unknown torchvision detection model {name!r}; known: {known}')
    if weights is None:
        kwargs.setdefault('weights_backbone', None)
    model = torchvision.models.get_model(name, weights=weights, **kwargs)
    return PersonDetector(model.to(device), score_threshold)


def detect_people(detector: DetectorLike, images: Sequence[Tensor]) -> list[Tensor]:
    """(P, 5) person boxes (x, y, w, h, score) per image from a `PersonDetector`, a torchvision detection model (all
    its person outputs, every score) or a callable returning (P, 4) or (P, 5) boxes for one image."""
    if isinstance(detector, nn.Module):
        detector = PersonDetector(detector, score_threshold=0.0)
    if isinstance(detector, PersonDetector):
        return detector.detect(images)
    found = []
    for image in images:
        boxes = torch.as_tensor(detector(image), dtype=torch.float32)
        boxes = boxes.reshape(0, 5) if boxes.numel() == 0 else boxes.reshape(-1, boxes.shape[-1])
        if boxes.shape[1] == 4:
            boxes = torch.cat([boxes, torch.ones(len(boxes), 1)], dim=1)
        if boxes.shape[1] != 5:
            raise ValueError(f'a detector must return (P, 4) or (P, 5) boxes (x, y, w, h[, score]), got shape '
                             f'{list(boxes.shape)}')
        found.append(boxes)
    return found
