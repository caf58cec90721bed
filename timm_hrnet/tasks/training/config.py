"""How a run trains: `TrainConfig` (every task), each task's official defaults (`Recipe`), and the rule that turns
one into the other. None in a config means "the recipe's value"."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .samples import check_policy

__all__ = ['TrainConfig', 'Recipe', 'resolve_config', 'resume_differences', 'AMP_MODES', 'CHECKPOINTING_MODES',
           'SCHEDULES', 'RESUMABLE_CHANGES']

AMP_MODES = ('none', 'bf16', 'fp16')
CHECKPOINTING_MODES = ('none', 'full', 'selective')
SCHEDULES = ('step', 'poly', 'cosine', 'constant')
# fields a resumed run may change: where and how fast it runs, not what it computes (amp and compile round
# differently, so a resumed run that changes them is no longer bit-identical, only equivalent)
RESUMABLE_CHANGES = frozenset({
    'output_dir', 'workers', 'max_steps', 'resume', 'log_every', 'device', 'progress', 'tensorboard', 'eval_every',
    'checkpoint_every', 'compile', 'amp', 'grad_checkpointing', 'channels_last', 'on_bad_sample', 'overwrite',
})  # and every evaluation setting (fields named eval_*)


def default_workers() -> int:
    """Data-loading processes by default: one per usable core, at most 4 (more than the cores only competes)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return max(1, min(4, cores))


@dataclass(frozen=True)
class TrainConfig:
    """How to train; None means the task's official recipe (`Recipe`).

    `batch_size` is per process (global batch = batch_size x world size). `optimizer` is a timm name ('adam',
    'adamw', 'momentum' = SGD with momentum as the official code, 'sgd' = Nesterov in timm). `lr_steps` are epochs
    of the 'step' schedule (default: the official 170 and 200 of 210, scaled to `epochs`). `checkpoint_every` steps
    (0: at the end of each epoch; always at the end of training and at `max_steps`), `eval_every` epochs (0: never;
    always after the last epoch when there is validation data), `max_steps` stops after that many steps in total
    with a checkpoint (resume later: `resume='auto'` resumes from `<output_dir>/last.pth` if there is one, a path
    from that file). `grad_checkpointing`: 'full' or 'selective' recomputation (`set_grad_checkpointing`).
    `sync_bn` converts BatchNorm to SyncBatchNorm under torchrun (CUDA only); `freeze_bn` keeps BatchNorm in eval
    mode (running statistics, affine parameters still trained). `on_bad_sample`: 'error' or 'skip'. An
    `output_dir` that holds a run is refused unless the run is resumed or `overwrite` says to start it over. `workers`
    defaults to the cores this process may use, at most 4.
    """

    output_dir: str = 'train-output'
    epochs: int | None = None
    batch_size: int | None = None
    workers: int = dataclasses.field(default_factory=default_workers)
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    schedule: str | None = None
    lr_steps: tuple[int, ...] | None = None
    lr_factor: float = 0.1
    poly_power: float = 0.9
    warmup_steps: int = 0
    amp: str = 'none'
    compile: bool = False
    grad_checkpointing: str = 'none'
    channels_last: bool = False
    ema_decay: float | None = None
    sync_bn: bool = False
    freeze_bn: bool = False
    seed: int = 0
    checkpoint_every: int = 0
    eval_every: int = 1
    max_steps: int | None = None
    resume: str | None = None
    log_every: int = 20
    device: str | None = None
    progress: bool = True
    tensorboard: bool | None = None
    on_bad_sample: str = 'error'
    overwrite: bool = False


@dataclass(frozen=True)
class Recipe:
    """A task's official defaults (docs/training.md says where each comes from); `lr_steps` are fractions of the
    epochs, so a shorter run decays at the same share of its length."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    schedule: str
    lr_steps: tuple[float, ...] = ()


def resolve_config(config: TrainConfig, recipe: Recipe) -> TrainConfig:
    """`config` with every None taken from the recipe, and checked."""
    epochs = config.epochs if config.epochs is not None else recipe.epochs
    lr_steps = config.lr_steps
    if lr_steps is None:
        lr_steps = tuple(max(1, round(f * epochs)) for f in recipe.lr_steps)
    resolved = dataclasses.replace(
        config, epochs=epochs, lr_steps=tuple(int(s) for s in lr_steps),
        batch_size=config.batch_size if config.batch_size is not None else recipe.batch_size,
        optimizer=config.optimizer or recipe.optimizer, lr=config.lr if config.lr is not None else recipe.lr,
        weight_decay=config.weight_decay if config.weight_decay is not None else recipe.weight_decay,
        schedule=config.schedule or recipe.schedule,
    )
    if resolved.epochs < 1 or resolved.batch_size < 1:
        raise ValueError(f'epochs and batch_size must be positive, got {resolved.epochs} and {resolved.batch_size}')
    for name, value, allowed in (('amp', resolved.amp, AMP_MODES), ('schedule', resolved.schedule, SCHEDULES),
                                 ('grad_checkpointing', resolved.grad_checkpointing, CHECKPOINTING_MODES)):
        if value not in allowed:
            raise ValueError(f'{name} must be one of {", ".join(allowed)}, got {value!r}')
    for name in ('workers', 'checkpoint_every', 'eval_every', 'warmup_steps'):
        if getattr(resolved, name) < 0:
            raise ValueError(f'{name} must be >= 0, got {getattr(resolved, name)}')
    if resolved.log_every < 1 or (resolved.max_steps is not None and resolved.max_steps < 1):
        raise ValueError(f'log_every and max_steps must be positive, got {resolved.log_every} and '
                         f'{resolved.max_steps}')
    if not resolved.lr > 0:
        raise ValueError(f'lr must be positive, got {resolved.lr}')
    check_policy(resolved.on_bad_sample)
    if resolved.sync_bn and resolved.freeze_bn:
        raise ValueError('sync_bn and freeze_bn exclude each other (frozen BatchNorm computes no batch statistics)')
    if resolved.ema_decay is not None and not 0 < resolved.ema_decay < 1:
        raise ValueError(f'ema_decay must be in (0, 1), got {resolved.ema_decay}')
    return resolved


def resume_differences(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The fields (other than `RESUMABLE_CHANGES` and eval_*) in which a resumed run's config (JSON form) differs
    from the saved one, as 'name: saved -> now'."""
    return [f'{key}: {saved.get(key)!r} -> {value!r}' for key, value in config.items()
            if key not in RESUMABLE_CHANGES and not key.startswith('eval_') and saved.get(key) != value]
