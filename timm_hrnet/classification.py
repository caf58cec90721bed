"""The classification API: model lookup by timm or mmpretrain name, checkpoint loading, image classification with
top-k decoding."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any, TypeAlias

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_data_config
from torch import nn

from .checkpoints import Checkpoint
from .convert import convert_state_dict
from .images import UnreadableImageError, to_pil

__all__ = [
    'MMPRETRAIN_NAMES',
    'UnknownModelError',
    'UnreadableImageError',
    'build_eval_transform',
    'class_names',
    'get_model',
    'inference_model',
    'load_model',
    'load_rgb_image',
    'resolve_device',
    'resolve_model_name',
]

# mmpretrain model-zoo name -> timm `architecture.tag`. The seven plain entries are mmpretrain's conversions of the
# official Microsoft (HRNet-Image-Classification) weights, which are exactly the `ms_in1k` weights; the two SSLD
# entries are PaddleClas' distilled weights, published in timm as the `*_ssld.paddle_in1k` models.
MMPRETRAIN_NAMES: dict[str, str] = {
    'hrnet-w18_3rdparty_8xb32_in1k': 'hrnet_w18.ms_in1k',
    'hrnet-w30_3rdparty_8xb32_in1k': 'hrnet_w30.ms_in1k',
    'hrnet-w32_3rdparty_8xb32_in1k': 'hrnet_w32.ms_in1k',
    'hrnet-w40_3rdparty_8xb32_in1k': 'hrnet_w40.ms_in1k',
    'hrnet-w44_3rdparty_8xb32_in1k': 'hrnet_w44.ms_in1k',
    'hrnet-w48_3rdparty_8xb32_in1k': 'hrnet_w48.ms_in1k',
    'hrnet-w64_3rdparty_8xb32_in1k': 'hrnet_w64.ms_in1k',
    'hrnet-w18_3rdparty_8xb32-ssld_in1k': 'hrnet_w18_ssld.paddle_in1k',
    'hrnet-w48_3rdparty_8xb32-ssld_in1k': 'hrnet_w48_ssld.paddle_in1k',
}

ImageInput: TypeAlias = str | PathLike | Image.Image | np.ndarray
Prediction: TypeAlias = dict[str, Any]


class UnknownModelError(ValueError):
    """A model name that is neither a registered timm model (with a valid tag) nor an mmpretrain HRNet name."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    return torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))


MODEL_SOURCES = ('hf-hub', 'local-dir')  # the prefixes timm.create_model resolves


def _known_hrnet_names() -> list[str]:
    """Names offered as suggestions: every HRNet architecture, every `architecture.tag`, every mmpretrain name."""
    return timm.list_models('hrnet*') + timm.list_models('hrnet*', pretrained=True) + list(MMPRETRAIN_NAMES)


def resolve_model_name(name: str) -> str:
    """Map an mmpretrain name to its timm `architecture.tag`; check a timm name (and its tag) is registered.

    `hf-hub:ORG/REPO` and `local-dir:DIR` names (the repos hub_upload publishes) pass through for timm to resolve.
    """
    if name in MMPRETRAIN_NAMES:
        return MMPRETRAIN_NAMES[name]
    source, has_source, _ = name.partition(':')
    if has_source:
        if source not in MODEL_SOURCES:
            raise UnknownModelError(
                f'Unknown model source {source!r} in {name!r}; use hf-hub:ORG/REPO or local-dir:DIR')
        return name
    if '/' in name:
        raise UnknownModelError(f'{name!r} is not a model name; a Hub repo is written hf-hub:{name}, '
                                f'a local directory local-dir:{name}')
    architecture, _, tag = name.partition('.')
    if timm.is_model(architecture) and (not tag or name in timm.list_pretrained(name)):
        return name
    suggestions = difflib.get_close_matches(name, _known_hrnet_names(), n=5, cutoff=0.5)
    hint = f'; did you mean {", ".join(suggestions)}?' if suggestions else ''
    raise UnknownModelError(f'unknown model name {name!r}{hint}')


def get_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Create a model from a timm name (tag optional), an `hf-hub:` / `local-dir:` name or an mmpretrain HRNet name.

    Keyword arguments go to `timm.create_model` (e.g. `num_classes`, `features_only`, `pretrained_cfg_overlay`).
    """
    return timm.create_model(resolve_model_name(name), pretrained=pretrained, **kwargs)


def load_model(name: str, checkpoint: Checkpoint | str | PathLike | None = None, pretrained: bool = True) -> nn.Module:
    """Create `name` and, when given, load `checkpoint` in any layout the converter reads (class count taken from it).

    `checkpoint` may be a path or the `Checkpoint` that `read_checkpoint` made of one, so a caller that also needs
    the file (for an error message, say) reads it once. Without a checkpoint the model gets its published weights
    when `pretrained` is true.
    """
    if checkpoint is None:
        return get_model(name, pretrained=pretrained)
    model = get_model(name, pretrained=False)  # its pretrained cfg names the architecture (also for hf-hub/local-dir)
    state_dict = convert_state_dict(checkpoint, model.pretrained_cfg['architecture'])
    classifier = model.pretrained_cfg.get('classifier', 'classifier')
    num_classes = state_dict[f'{classifier}.weight'].shape[0]
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    model.load_state_dict(state_dict)
    return model


def build_eval_transform(
    model: nn.Module, img_size: int | None = None, crop_pct: float | None = None
) -> Callable[[Image.Image], torch.Tensor]:
    """Evaluation preprocessing from the model's pretrained cfg, optionally with another input size / crop fraction."""
    data_config = resolve_data_config({'img_size': img_size, 'crop_pct': crop_pct}, model=model)
    return create_transform(**data_config, is_training=False)


def class_names(model: nn.Module) -> list[str] | None:
    """Human-readable class names: those stored with a fine-tuned model, else ImageNet's when the class count fits."""
    pretrained_cfg = getattr(model, 'pretrained_cfg', None) or {}
    num_classes = getattr(model, 'num_classes', None)
    label_names = pretrained_cfg.get('label_names')
    if label_names and len(label_names) == num_classes:
        descriptions = pretrained_cfg.get('label_descriptions') or {}
        return [descriptions.get(label, label) for label in label_names]
    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    return ImageNetInfo(subset).label_descriptions()


def load_rgb_image(path: str | PathLike) -> Image.Image:
    """Open and fully decode an image as RGB (the package's one image reader, `timm_hrnet.images`)."""
    return to_pil(path, 'RGB')


def _is_single(images: Any) -> bool:
    if isinstance(images, torch.Tensor):
        if images.ndim not in (3, 4):
            raise ValueError(f'tensor input must be CHW or NCHW, got shape {tuple(images.shape)}')
        return images.ndim == 3
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return isinstance(images, (str, PathLike, Image.Image))


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device('cpu')


@torch.inference_mode()
def inference_model(
    model_or_name: nn.Module | str,
    images: ImageInput | Sequence[ImageInput] | torch.Tensor,
    topk: int = 5,
    device: str | torch.device | None = None,
    *,
    batch_size: int = 32,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
) -> Prediction | list[Prediction]:
    """Classify images and decode the scores, in the spirit of mmpretrain's `inference_model`.

    `images` is a path, PIL image or HWC uint8 numpy array (or a list of them), or an already preprocessed float
    tensor (CHW or NCHW). A single image (or CHW tensor) gives one dict, anything else a list of dicts, each holding
    `pred_label` (int), `pred_score` (float), `pred_class` (str, the label index when the model has no class names),
    `pred_scores` (1-D CPU float tensor, the full softmax) and `topk` (list of `(label, class, score)`, best first).
    A model name (timm or mmpretrain) is created with its published weights. `device` defaults to the module's own
    device, or CUDA when available for a name; passing `device` with a module moves the caller's module there (and
    leaves it there). The model is run in eval mode and its train/eval mode restored after.
    """
    if topk < 1:
        raise ValueError(f'topk must be at least 1, got {topk}')
    if isinstance(model_or_name, str):
        model = get_model(model_or_name, pretrained=True)
        device = resolve_device(device)
    else:
        model = model_or_name
    if getattr(model, 'num_classes', None) == 0:
        raise ValueError('inference_model needs a classifier; this model has none (features_only, or num_classes=0): '
                         'create it with its classifier')
    if device is not None:
        model.to(device)
    device = _model_device(model)
    single = _is_single(images)

    if isinstance(images, torch.Tensor):
        batch = images.unsqueeze(0) if single else images
    else:
        image_list = [images] if single else list(images)
        transform = transform or build_eval_transform(model)
        batch = torch.stack([transform(to_pil(image, 'RGB')) for image in image_list]) if image_list else torch.empty(0)

    was_training = model.training
    model.eval()
    try:
        scores = torch.cat([_class_scores(model, chunk.to(device)) for chunk in batch.split(batch_size)]) \
            if len(batch) else torch.empty(0)
    finally:
        model.train(was_training)

    names = class_names(model)
    predictions = [_decode(row, min(topk, row.numel()), names) for row in scores]
    return predictions[0] if single else predictions


def _class_scores(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Softmax over the logits; a features model (a list of maps) or a pooled-feature output is refused by name."""
    output = model(batch)
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        got = f'a {type(output).__name__} of {len(output)} feature maps' if isinstance(output, (list, tuple)) else (
            f'a tensor of shape {tuple(output.shape)}' if isinstance(output, torch.Tensor) else type(output).__name__)
        raise ValueError(f'inference_model needs a classifier returning (batch, classes) logits; this model returned '
                         f'{got} (a features_only model?): create it without features_only')
    return output.float().softmax(dim=-1).cpu()


def _decode(scores: torch.Tensor, topk: int, names: list[str] | None) -> Prediction:
    top_scores, top_labels = scores.topk(topk)

    def name_of(label: int) -> str:
        return names[label] if names is not None else str(label)

    ranked = [
        (int(label), name_of(int(label)), float(score)) for score, label in zip(top_scores, top_labels, strict=True)
    ]
    label, class_name, score = ranked[0]
    return {'pred_label': label, 'pred_score': score, 'pred_class': class_name, 'pred_scores': scores, 'topk': ranked}
