"""Deprecated: `timm_hrnet.pose` is now `timm_hrnet.tasks.pose`."""
from timm_hrnet._deprecated import alias

alias(__name__, 'timm_hrnet.tasks.pose')
