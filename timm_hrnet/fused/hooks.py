"""Forward hooks carried over to the modules that replace the originals, so timm's feature hooks (and a user's)
still fire on a fused model."""
from __future__ import annotations

from torch import nn

_HOOK_DICTS = (
    '_forward_hooks', '_forward_hooks_with_kwargs', '_forward_hooks_always_called',
    '_forward_pre_hooks', '_forward_pre_hooks_with_kwargs',
)


def _with_hooks_of(old: nn.Module, new: nn.Module) -> nn.Module:
    """`new` carrying `old`'s forward hooks (e.g. timm's feature hooks), so they fire on the replacement."""
    for hooks in _HOOK_DICTS:
        if getattr(old, hooks, None):
            setattr(new, hooks, getattr(old, hooks))
    return new


def _replace(parent: nn.Module, name: str, new: nn.Module) -> None:
    """Replace child `name` of `parent` by `new`, which takes over the old child's hooks."""
    setattr(parent, name, _with_hooks_of(getattr(parent, name), new))
