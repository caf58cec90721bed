"""Registering our entrypoints under the names timm's built-in HRNet already uses.

timm warns when a name is registered twice and would otherwise keep the built-in's tags next to ours, so
the built-in registration is removed first: `list_models`/`list_pretrained` then show exactly our entries.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

from timm.models import register_model

from .timm_compat import registry_tables

__all__ = ['register_hrnet', 'unregister_model']

FnT = TypeVar('FnT', bound=Callable)


def unregister_model(name: str) -> None:
    """Remove every registry entry of an architecture: entrypoint, module maps, tags and pretrained cfgs."""
    registry = registry_tables()
    if registry is None:
        return
    registry._model_entrypoints.pop(name, None)
    module = registry._model_to_module.pop(name, None)
    if module is not None:
        registry._module_to_models[module].discard(name)
    for tagged in registry._model_with_tags.pop(name, []) + [name]:
        registry._model_pretrained_cfgs.pop(tagged, None)
        registry._model_has_pretrained.discard(tagged)
    registry._model_default_cfgs.pop(name, None)


def register_hrnet(fn: FnT) -> FnT:
    """`timm.models.register_model` that first replaces an existing registration of the same name."""
    unregister_model(fn.__name__)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*[Oo]verwrit.*')  # replacing the built-in is the point
        return register_model(fn)
