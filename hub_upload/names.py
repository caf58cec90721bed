"""Names users give, checked before anything is written or sent: repo ids, source layouts, interpolations, tasks.

Imports nothing heavy, so that push and --help start without torch; the tuples spell out timm_hrnet's and timm's
own lists for that reason (a test checks they match).
"""

from __future__ import annotations

from huggingface_hub import constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id as _hf_validate_repo_id

__all__ = ['CARD_NAME', 'CLASSIFICATION', 'CLASSIFIER_SOURCES', 'CONFIG_NAME', 'INTERPOLATIONS', 'SOURCES', 'TASKS',
           'TASK_ARCHITECTURES', 'TASK_LAYOUTS', 'TASK_METRICS', 'TASK_SOURCES', 'WEIGHTS_NAME', 'validate_repo_id',
           'validate_repo_name']

# the files of a staged repo, as the Hub and timm name them
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE
CONFIG_NAME = constants.CONFIG_NAME
CARD_NAME = constants.REPOCARD_NAME

# 'auto' + timm_hrnet.checkpoints.LAYOUT_NAMES
SOURCES = ('auto', 'canonical', 'official', 'timm', 'mmpretrain', 'mmpose', 'mmseg')
CLASSIFIER_SOURCES = ('auto', 'canonical', 'official', 'timm', 'mmpretrain')  # the classification layouts' names
INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest', 'box', 'hamming', 'lanczos')  # timm.data.transforms' names
CLASSIFICATION = 'classification'  # timm_hrnet.checkpoints' names of what a checkpoint is
TASK_ARCHITECTURES = {'pose': 'hrnet_pose', 'segmentation': 'hrnet_seg'}  # config.json 'architecture' of task repos
TASKS = (CLASSIFICATION, *TASK_ARCHITECTURES)
# the layouts a task checkpoint comes in, as repos record them: 'official' is the canonical layout of the releases
TASK_LAYOUTS = {'pose': ('official', 'mmpose'), 'segmentation': ('official', 'mmseg')}
TASK_SOURCES = ('auto', 'official', 'mmpose', 'mmseg')
# the results a task repo's card may state (percentages): COCO keypoint AP / AR, MPII PCKh@0.5; mean IoU
TASK_METRICS = {'pose': ('AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'PCKh'), 'segmentation': ('mIoU',)}


def validate_repo_name(name: str, what: str = 'repo name') -> str:
    """A Hub repo name that is also a safe directory name: not empty, no '/', no '..', no leading '.' or '-'."""
    if not isinstance(name, str) or not name or '/' in name:
        raise ValueError(f'invalid {what} {name!r}: expected a non-empty name without "/"')
    try:
        _hf_validate_repo_id(name)
    except HFValidationError as e:
        raise ValueError(f'invalid {what} {name!r}: {str(e).splitlines()[0]}') from e
    return name


def validate_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` with both parts valid Hub names (an empty part, ``ORG/`` or ``../x``, is refused)."""
    owner, slash, name = repo_id.partition('/') if isinstance(repo_id, str) else ('', '', '')
    if not slash or '/' in name:
        raise ValueError(f'invalid repo id {repo_id!r}: expected ORG/NAME')
    validate_repo_name(owner, 'repo owner')
    validate_repo_name(name, 'repo name')
    return repo_id
