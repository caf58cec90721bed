"""Deprecated: `timm_hrnet.inference` is now `timm_hrnet.classification`."""
from timm_hrnet._deprecated import alias

alias(__name__, 'timm_hrnet.classification')
