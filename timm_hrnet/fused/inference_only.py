"""The classes a fused model takes on: they refuse training (its BatchNorm statistics are baked in), and the whole
model decides once per call whether its convs run oneDNN's fused kernels."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..hrnet import HRNet, HRNetFeatures
from ..timm_compat import FeatureGetterNet, FeatureHookNet
from .units import CallState, _onednn_fusable

__all__ = [
    'refuse_training', 'InferenceOnlyMixin', 'InferenceOnlyModel', 'register_inference_only', 'inference_only_class',
    'is_inference_optimized', 'InferenceOnlyHRNet', 'InferenceOnlyHRNetFeatures', 'InferenceOnlyFeatureGetterNet',
    'InferenceOnlyFeatureHookNet',
]

_T = TypeVar('_T', bound=type)


def refuse_training() -> None:
    """The error for any attempt to train a fused model (a function, so TorchScript compiles it with the message)."""
    raise RuntimeError(
        'this is an inference-only fused model (BatchNorm folded into the convolutions by '
        'timm_hrnet.optimize_for_inference); it cannot be trained: train the original, unfused model instead'
    )


class InferenceOnlyMixin:
    """Makes `.train()` fail loudly instead of training a network whose BatchNorm statistics are baked in."""

    def train(self, mode: bool = True) -> nn.Module:
        if mode:
            refuse_training()
        return super().train(False)  # type: ignore[misc]


class InferenceOnlyModel(InferenceOnlyMixin):
    """A whole fused model: besides refusing training, it decides once per call whether its convs run oneDNN's
    fused kernels, in `call_state` (the `CallState` that `optimize_for_inference` shares with all its convs).

    The decision holds for the duration of the call and is reset afterwards, also when the call fails; a nested
    call of the same model keeps the outer call's decision.
    """

    __jit_ignored_attributes__ = ['call_state']
    call_state: CallState | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        state = self.call_state
        if (
            torch.compiler.is_compiling() or state is None or state.fusable is not None
            or not args or not isinstance(args[0], Tensor)
        ):
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        state.fusable = _onednn_fusable(args[0])
        try:
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        finally:
            state.fusable = None


# model class -> its fused twin: a subclass, so isinstance checks still hold
_INFERENCE_ONLY_CLASSES: dict[type, type] = {}


def register_inference_only(base_cls: type) -> Callable[[_T], _T]:
    """Class decorator declaring the fused twin of `base_cls`, a subclass of `InferenceOnlyModel` and `base_cls`.

    The module that owns `base_cls` declares it at module level, so fused models of that class pickle and
    `torch.save` whole.
    """
    def register(cls: _T) -> _T:
        if not (issubclass(cls, InferenceOnlyModel) and issubclass(cls, base_cls)):
            raise TypeError(f'{cls.__name__} must subclass InferenceOnlyModel and {base_cls.__name__}')
        _INFERENCE_ONLY_CLASSES[base_cls] = cls
        return cls
    return register


def inference_only_class(cls: type) -> type:
    """The fused twin of `cls`: a subclass that refuses training and runs as `InferenceOnlyModel`.

    Unknown classes (e.g. a user's subclass) get one made on the fly; those models work but do not pickle.
    """
    if issubclass(cls, InferenceOnlyMixin):
        return cls
    if cls not in _INFERENCE_ONLY_CLASSES:
        _INFERENCE_ONLY_CLASSES[cls] = type(f'InferenceOnly{cls.__name__}', (InferenceOnlyModel, cls), {})
    return _INFERENCE_ONLY_CLASSES[cls]


def is_inference_optimized(model: nn.Module) -> bool:
    """Whether `model` came out of `optimize_for_inference`."""
    return isinstance(model, InferenceOnlyMixin)


@register_inference_only(HRNet)
class InferenceOnlyHRNet(InferenceOnlyModel, HRNet):
    """A fused HRNet classifier (module level, so that fused models pickle and `torch.save` whole)."""


@register_inference_only(HRNetFeatures)
class InferenceOnlyHRNetFeatures(InferenceOnlyModel, HRNetFeatures):
    """A fused `features_only` HRNet."""


@register_inference_only(FeatureGetterNet)
class InferenceOnlyFeatureGetterNet(InferenceOnlyModel, FeatureGetterNet):
    """A fused HRNet in timm's `feature_cls='getter'` wrapper."""


@register_inference_only(FeatureHookNet)
class InferenceOnlyFeatureHookNet(InferenceOnlyModel, FeatureHookNet):
    """A fused HRNet in timm's `feature_cls='hook'` wrapper."""
