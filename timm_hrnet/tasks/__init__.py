"""HRNet's own tasks on the shared trunk: top-down pose estimation and HRNetV2 (+ OCR) semantic segmentation."""
from .pose import HRNetPose, create_pose_model
from .segmentation import HRNetOCR, HRNetSeg, create_seg_model

__all__ = ['HRNetPose', 'create_pose_model', 'HRNetSeg', 'HRNetOCR', 'create_seg_model']
