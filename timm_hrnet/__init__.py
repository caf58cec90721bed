"""HRNet as first-class timm models: `import timm_hrnet` registers hrnet_* with timm, replacing the built-in ones."""
from .classification import get_model, inference_model, load_model
from .fused import is_inference_optimized, optimize_for_inference
from .hrnet import HRNet, HRNetFeatures
from .necks import HRNetDetectionBackbone, HRNetV2, HRNetV2p, hrnet_detection_backbone
from .pretrained_cfgs import published_results
from .tasks import HRNetOCR, HRNetPose, HRNetSeg, create_pose_model, create_seg_model
from .variants import VARIANTS, HRNetSpec, StageSpec

__all__ = [
    'HRNet', 'HRNetFeatures', 'HRNetSpec', 'StageSpec', 'VARIANTS',
    'HRNetV2', 'HRNetV2p', 'HRNetDetectionBackbone', 'hrnet_detection_backbone',
    'get_model', 'inference_model', 'load_model', 'published_results',
    'optimize_for_inference', 'is_inference_optimized',
    'HRNetPose', 'create_pose_model', 'HRNetSeg', 'HRNetOCR', 'create_seg_model',
]
__version__ = '0.1.0'
