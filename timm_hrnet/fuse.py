"""Deprecated: `timm_hrnet.fuse` is now the `timm_hrnet.fused` package."""
from timm_hrnet._deprecated import alias

alias(__name__, 'timm_hrnet.fused')
