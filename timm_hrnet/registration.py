"""Registering our entrypoints under the names timm's built-in HRNet already uses.

timm warns when a name is registered twice and would otherwise keep the built-in's tags next to ours, so
the built-in registration is removed first: `list_models`/`list_pretrained` then show exactly our entries.

`timm.create_model(name, checkpoint_path=FILE)` reads FILE with timm's own loader; for our models a failure there
(a garbage or truncated file, a pickle weights_only refuses, tensors that do not fit) is re-raised as one line that
names the file, read again through our checkpoint reader for its reason (`wrap_timm_checkpoint_loading`). Every
other timm model loads exactly as timm loads it.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import timm.models._factory
from timm.models import register_model
from torch import nn

from .checkpoints import one_line, read_checkpoint_object
from .timm_compat import registry_tables

__all__ = ['register_hrnet', 'unregister_model', 'wrap_timm_checkpoint_loading']

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


def _is_ours(model: nn.Module) -> bool:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return type(model).__module__.startswith('timm_hrnet') or str(cfg.get('architecture', '')).startswith('hrnet')


def wrap_timm_checkpoint_loading() -> None:
    """Make `create_model(..., checkpoint_path=...)` failures on our models one line naming the file; a timm
    release without `_factory.load_checkpoint` keeps timm's behaviour."""
    original = getattr(timm.models._factory, 'load_checkpoint', None)
    if original is None or getattr(original, '_timm_hrnet_wrapped', False):
        return

    @functools.wraps(original)
    def load_checkpoint(model: nn.Module, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_ours(model):
            return original(model, checkpoint_path, *args, **kwargs)
        try:
            return original(model, checkpoint_path, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - whatever timm's loader raised, the user gets one line
            read_checkpoint_object(checkpoint_path)  # the file itself unreadable: our reader's line names it
            architecture = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture', type(model).__name__)
            raise ValueError(f"checkpoint_path '{checkpoint_path}' does not load into {architecture}: "
                             f'{type(error).__name__}: {one_line(error, limit=600)}') from error

    load_checkpoint._timm_hrnet_wrapped = True  # type: ignore[attr-defined]
    timm.models._factory.load_checkpoint = load_checkpoint
