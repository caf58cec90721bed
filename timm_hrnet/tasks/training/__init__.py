"""Training and fine-tuning of the pose and segmentation models, the official HRNet recipes by default:
`train_pose` (COCO-format keypoints, any joint count) and `train_seg` (image / label-map folders), on one process
or under `torchrun`; docs/training.md has the recipes, resumption and custom keypoint sets."""
from ..datasets import read_keypoint_file
from .config import Recipe, TrainConfig
from .pose_data import PoseAugmentation
from .pose_training import POSE_RECIPE, PoseTrainConfig, load_pose_model, train_pose
from .samples import BadSampleError
from .seg_data import SegAugmentation
from .seg_training import SEG_RECIPE, SegTrainConfig, load_seg_model, train_seg
from .trainer import TrainResult

__all__ = [
    'train_pose', 'train_seg', 'load_pose_model', 'load_seg_model', 'TrainConfig', 'PoseTrainConfig',
    'SegTrainConfig', 'Recipe', 'POSE_RECIPE', 'SEG_RECIPE', 'TrainResult', 'PoseAugmentation', 'SegAugmentation',
    'read_keypoint_file', 'BadSampleError',
]
