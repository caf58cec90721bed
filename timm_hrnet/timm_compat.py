"""The few timm internals this package relies on, each behind a fallback for timm versions that moved them.

Tested at both ends of the supported range (see pyproject.toml and .ci/run): a timm release that renames one of
these still gives working models, never an ImportError at `import timm_hrnet`.
"""
from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path
from typing import Any

import timm
from torch import nn

__all__ = [
    'feature_take_indices', 'pretrained_cfg_for_features', 'take_indices_fallback', 'features_cfg_fallback',
    'FeatureGetterNet', 'FeatureHookNet', 'FeatureDictNet', 'registry_tables',
    'save_config_for_hf',
]


def take_indices_fallback(num_features: int, indices: int | list[int] | tuple[int, ...] | None = None,
                          ) -> tuple[list[int], int]:
    """timm's `feature_take_indices` contract: None takes all, an int the last n, a sequence those indices."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f'last-n ({indices}) is out of range (1 to {num_features})')
        take = [num_features - indices + i for i in range(indices)]
    else:
        take = []
        for i in indices:
            index = num_features + i if i < 0 else i
            if not 0 <= index < num_features:
                raise ValueError(f'feature index {index} is out of range (0 to {num_features - 1})')
            take.append(index)
    return take, max(take)


def features_cfg_fallback(pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """timm's `pretrained_cfg_for_features`: a features model's cfg without the classifier's fields."""
    cfg = copy.deepcopy(dict(pretrained_cfg))
    for key in ('num_classes', 'classifier', 'global_pool'):
        cfg.pop(key, None)
    return cfg


try:
    from timm.models._features import feature_take_indices
except ImportError:
    feature_take_indices = take_indices_fallback

try:
    from timm.models._builder import pretrained_cfg_for_features
except ImportError:
    pretrained_cfg_for_features = features_cfg_fallback

try:
    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet
except ImportError:
    from timm.models import FeatureDictNet, FeatureHookNet  # public in every supported release

    class FeatureGetterNet(nn.Module):  # type: ignore[no-redef]
        """Stands in where timm has no FeatureGetterNet: there are then no such wrappers to optimize."""


_REGISTRY_TABLES = ('_model_entrypoints', '_model_to_module', '_module_to_models', '_model_with_tags',
                    '_model_pretrained_cfgs', '_model_has_pretrained', '_model_default_cfgs')


@functools.cache
def registry_tables() -> Any | None:
    """timm's registry module when it has the tables we edit to replace the built-in entries, else None."""
    try:
        from timm.models import _registry
    except ImportError:
        _registry = None
    if _registry is None or not all(hasattr(_registry, name) for name in _REGISTRY_TABLES):
        warnings.warn(
            "this timm's model registry has changed shape: timm_hrnet registers its models over the built-in ones "
            'without removing their old pretrained tags first', RuntimeWarning, stacklevel=2,
        )
        return None
    return _registry


def save_config_for_hf(model: nn.Module, config_path: Any, **kwargs: Any) -> None:
    """timm's writer of a Hub repo's config.json (used by hub_upload), with a clear error where timm moved it."""
    try:
        from timm.models._hub import save_config_for_hf as timm_save_config
    except ImportError as e:
        raise RuntimeError(
            f'this timm ({timm.__version__}) has no timm.models._hub.save_config_for_hf, which writes config.json '
            'for hub_upload; install a timm release within the range pyproject.toml declares'
        ) from e
    timm_save_config(model, Path(config_path), **kwargs)  # timm < 1.0.20 needs a Path, not a str
