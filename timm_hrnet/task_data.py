"""Deprecated: `timm_hrnet.task_data` is now `timm_hrnet.tasks.datasets`."""
from timm_hrnet._deprecated import alias

alias(__name__, 'timm_hrnet.tasks.datasets')
