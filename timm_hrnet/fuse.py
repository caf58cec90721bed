"""Deprecated: `timm_hrnet.fuse` is now the `timm_hrnet.fused` package, and the pose and segmentation models' fused
twins live with those models. The old class names stay here because a fused model saved whole (`torch.save`)
before the split names its classes `timm_hrnet.fuse.<class>`; every other name is `timm_hrnet.fused`'s."""
import warnings
from typing import Any

from . import fused
from .fused import is_inference_optimized, optimize_for_inference, refuse_training
from .fused.inference_only import (
    InferenceOnlyFeatureGetterNet,
    InferenceOnlyFeatureHookNet,
    InferenceOnlyHRNet,
    InferenceOnlyHRNetFeatures,
    InferenceOnlyMixin,
    InferenceOnlyModel,
)
from .fused.modules import InferenceBasicBlock, InferenceBottleneck, InferenceHRModule
from .fused.units import ConvAct, ConvChain
from .tasks.pose import InferenceOnlyHRNetPose
from .tasks.segmentation import InferenceOnlyHRNetSeg

__all__ = [
    'optimize_for_inference', 'is_inference_optimized', 'refuse_training', 'ConvAct', 'ConvChain',
    'InferenceOnlyMixin', 'InferenceOnlyModel', 'InferenceOnlyHRNet', 'InferenceOnlyHRNetFeatures',
    'InferenceOnlyHRNetPose', 'InferenceOnlyHRNetSeg', 'InferenceOnlyFeatureGetterNet', 'InferenceOnlyFeatureHookNet',
    'InferenceBasicBlock', 'InferenceBottleneck', 'InferenceHRModule',
]

warnings.warn('timm_hrnet.fuse is deprecated: use timm_hrnet.fused', DeprecationWarning, stacklevel=2)


def __getattr__(name: str) -> Any:
    """Any other name of `timm_hrnet.fused` (`register_inference_only`, ...), as when this module was its alias."""
    return getattr(fused, name)
