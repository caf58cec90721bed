"""Deprecated: `timm_hrnet.segmentation` is now `timm_hrnet.tasks.segmentation`."""
from timm_hrnet._deprecated import alias

alias(__name__, 'timm_hrnet.tasks.segmentation')
