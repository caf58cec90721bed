"""Inference-only HRNet: BatchNorm folded into the convolutions and a leaner exchange unit, with the same outputs.

`optimize_for_inference` (optimize.py) is the one entry; folding.py folds BatchNorm, units.py holds the fused conv
units, modules.py the fused blocks and exchange unit, padding.py the GPU width padding, and inference_only.py the
classes a fused model takes on (task packages declare theirs with `register_inference_only`).
"""
from .inference_only import (
    InferenceOnlyModel,
    inference_only_class,
    is_inference_optimized,
    refuse_training,
    register_inference_only,
)
from .optimize import optimize_for_inference
from .units import ConvAct, ConvChain

__all__ = [
    'optimize_for_inference', 'is_inference_optimized', 'refuse_training', 'ConvAct', 'ConvChain',
    'InferenceOnlyModel', 'register_inference_only', 'inference_only_class',
]
