"""The training loop both tasks share: DDP under torchrun, AMP, torch.compile, gradient checkpointing, EMA, timm's
optimizers and schedulers, checkpoints that resume exactly, evaluation, a progress bar and the log.

Exact resumption: the sample order is a function of (seed, epoch) (`samples.EpochSampler`), each sample's
augmentation a function of (seed, epoch, index), and the learning rate a function of the step; a checkpoint stores
the model, optimizer, scheduler, scaler, EMA, every rank's RNG states and the step, from which the epoch and the
position in it follow. A resumed run therefore computes what the uninterrupted run computes (bit-identical on CPU;
on GPU as far as its kernels are deterministic), with any number of DataLoader workers; it must find the same
sample list (the checkpoint's data fingerprint). A sample that cannot be loaded mid-epoch stops the run only after
the state of the last completed step is saved, so that resuming loses nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ...distributed import DistContext, all_reduce_sum, barrier, gather_objects
from ...outputs import OutputError
from .checkpointing import STATE_FILE, load_state, save_state
from .config import Recipe, TrainConfig, resume_differences
from .run_log import RunLog, json_safe
from .samples import BadSampleError, EpochSampler, bad_sample_problem

__all__ = ['TrainTask', 'TrainResult', 'run_training', 'resume_path']

_logger = logging.getLogger(__name__)


@dataclass
class TrainTask:
    """What the loop needs from a task: the model (an `HRNetTaskModel`), the training data (`samples.EpochSampler`
    keys), the loss of a batch, the evaluation (every rank calls it; None: no validation data), and the export of
    the trained model's state dict (rank 0). `scan` is what the dataset scan found, for the log; `fingerprint` the
    sample count and sample-list hash (`samples.data_fingerprint`) a resumed run must find again."""

    name: str
    model: nn.Module
    dataset: Dataset
    loss: Callable[[nn.Module, dict[str, Tensor]], Tensor]
    export: Callable[[dict[str, Tensor], Path], dict[str, str]]
    recipe: Recipe
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None
    scan: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Where a run ended: `finished` False when it stopped at `max_steps` (resume it); `files` the exported model
    (weights, config) when finished; `losses` the logged interval means; `metrics` the last evaluation; `skipped`
    the samples left out at load time; `model` the trained model (the EMA's when EMA is on), in eval mode."""

    output_dir: Path
    step: int
    epoch: int
    finished: bool
    state_file: Path
    files: dict[str, str]
    losses: list[float]
    metrics: dict[str, Any]
    skipped: int
    model: nn.Module
    config: TrainConfig


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Any:
    """timm's scheduler for the config, stepped per optimizer step (`step_update`)."""
    total = config.epochs * steps_per_epoch
    warmup = dict(warmup_t=config.warmup_steps, warmup_lr_init=config.lr * 1e-3 if config.warmup_steps else 0.0,
                  t_in_epochs=False)
    if config.schedule == 'step':
        # timm applies a milestone m from step m - 1 on; the official MultiStepLR decays from epoch e's first step
        return MultiStepLRScheduler(optimizer, decay_t=[e * steps_per_epoch + 1 for e in config.lr_steps],
                                    decay_rate=config.lr_factor, warmup_prefix=False, **warmup)
    if config.schedule == 'poly':
        return PolyLRScheduler(optimizer, t_initial=total, power=config.poly_power, **warmup)
    if config.schedule == 'cosine':
        return CosineLRScheduler(optimizer, t_initial=total, **warmup)
    return MultiStepLRScheduler(optimizer, decay_t=[total + 1], decay_rate=1.0, warmup_prefix=False,
                                **warmup)  # constant


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {'cpu': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state['cpu'])
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def resume_path(config: TrainConfig) -> Path | None:
    """The training state a run resumes from: None without `resume` (or with 'auto' and no state yet)."""
    if config.resume is None:
        return None
    path = Path(config.output_dir) / STATE_FILE if config.resume == 'auto' else Path(config.resume)
    if not path.is_file():
        if config.resume == 'auto':
            return None
        raise FileNotFoundError(f'training state to resume from not found: {path}')
    return path


# what a run writes in its output folder; any of them there means the folder holds a run
RUN_FILES = (STATE_FILE, 'log.jsonl', 'model.safetensors', 'config.json', 'tensorboard')


def claim_output_dir(config: TrainConfig, is_main: bool) -> None:
    """Refuse an output folder holding a run unless it is resumed or `overwrite` says to start over (then the old
    run's files are removed first, so its log does not continue into the new one)."""
    if config.resume is not None and config.overwrite:
        raise ValueError("resume and overwrite=True contradict each other: resume continues the run in "
                         f"{config.output_dir}, overwrite starts it over")
    output_dir = Path(config.output_dir)
    found = [name for name in RUN_FILES if (output_dir / name).exists()]
    if not found or config.resume is not None:
        return
    if not config.overwrite:
        raise OutputError(f"{output_dir} holds a training run ({', '.join(found)}): continue it with resume='auto', "
                          'start it over with overwrite=True, or choose another output_dir')
    if is_main:
        for name in found:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _metrics_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers of an evaluation worth a log line (no confusion matrix, no printed summary)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, dict)) and not isinstance(v, bool)
            and k not in ('confusion_matrix', 'per_class_acc')}


class _Loop:
    """One training run; `run_training` is its only user."""

    def __init__(self, task: TrainTask, config: TrainConfig, context: DistContext) -> None:
        self.task, self.config, self.context = task, config, context
        self.device = context.device
        self.output_dir = Path(config.output_dir)
        self.state_file = self.output_dir / STATE_FILE
        self.global_batch = config.batch_size * context.world_size
        self.steps_per_epoch = len(task.dataset) // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f'{len(task.dataset)} training samples make no global batch of {self.global_batch} '
                             f'({config.batch_size} per process x {context.world_size} processes)')
        self.total_steps = config.epochs * self.steps_per_epoch
        model = task.model.to(self.device)
        if config.grad_checkpointing != 'none':
            model.set_grad_checkpointing(True, selective=config.grad_checkpointing == 'selective')
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.sync_bn and context.world_size > 1:
            if self.device.type != 'cuda':
                raise ValueError('sync_bn: torch.nn.SyncBatchNorm runs on CUDA devices only; on CPU train with '
                                 'per-process BatchNorm or freeze_bn')
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        _set_train_mode(model, config.freeze_bn)
        # the official optimisers decay every parameter (bias and BatchNorm included)
        self.optimizer = create_optimizer_v2(model, opt=config.optimizer, lr=config.lr,
                                             weight_decay=config.weight_decay, momentum=config.momentum,
                                             filter_bias_and_bn=False)
        self.scheduler = _scheduler(self.optimizer, config, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == 'fp16')
        self.ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema_decay else None
        module: nn.Module = model
        if context.world_size > 1:
            module = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == 'cuda'
                                             else None)
        self.module = torch.compile(module) if config.compile else module
        self.autocast_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(config.amp)
        self.sampler = EpochSampler(task.dataset, context.world_size, context.rank, config.seed)
        # one loader for the run (workers kept between epochs); its own generator, so that making an iterator
        # draws nothing from the global RNG (a resumed run would be shifted)
        self.loader = DataLoader(task.dataset, batch_size=config.batch_size, sampler=self.sampler, drop_last=True,
                                 num_workers=config.workers, persistent_workers=config.workers > 0,
                                 pin_memory=self.device.type == 'cuda',
                                 generator=torch.Generator().manual_seed(config.seed))
        self.step = 0
        self.skipped = 0
        self.losses: list[float] = []
        self.metrics: dict[str, Any] = {}
        self.log = RunLog(self.output_dir, context.is_main, config.tensorboard)

    # -- state ------------------------------------------------------------------------------------------------------
    def save(self) -> None:
        rng = gather_objects(_rng_state(self.device), self.context)
        if self.context.is_main:
            state = dict(
                task=self.task.name, step=self.step, model=self.model.state_dict(),
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(), rng=rng, world_size=self.context.world_size,
                global_batch=self.global_batch, skipped=self.skipped, metrics=json_safe(self.metrics),
                config=json_safe(dataclasses.asdict(self.config)), data=self.task.fingerprint,
            )
            if self.ema is not None:
                state['model_ema'] = self.ema.module.state_dict()
            save_state(self.state_file, state)
        barrier(self.context)

    def restore(self, path: Path) -> None:
        state = load_state(path)
        if state['task'] != self.task.name:
            raise ValueError(f'{path} is the training state of a {state["task"]} run, not {self.task.name}')
        if state['global_batch'] != self.global_batch:
            raise ValueError(f'{path} was trained with a global batch of {state["global_batch"]}; resuming with '
                             f'{self.global_batch} would change the batches and the schedule')
        changed = resume_differences(state['config'], json_safe(dataclasses.asdict(self.config)))
        if changed:
            raise ValueError(f'{path} was written by a run with other settings; resuming needs the same ones '
                             f'(to fine-tune from it instead, start a new output_dir with init={path}): '
                             f'{"; ".join(changed)}')
        self.check_data(state.get('data'), path)
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.scaler.load_state_dict(state['scaler'])
        if self.ema is not None:
            self.ema.module.load_state_dict(state['model_ema'])
        if state['world_size'] == self.context.world_size:
            _set_rng_state(state['rng'][self.context.rank], self.device)
        else:
            _logger.warning('%s was written by %d processes, resumed by %d: the data is the same, the RNG states '
                            '(used by nothing in the HRNet recipes) are reseeded', path, state['world_size'],
                            self.context.world_size)
        self.step = int(state['step'])
        self.skipped = int(state['skipped'])
        self.metrics = dict(state['metrics'])
        self.log.write(dict(event='resume', step=self.step, epoch=self.step // self.steps_per_epoch, path=str(path)))

    def check_data(self, saved: dict[str, Any] | None, path: Path) -> None:
        """Refuse to resume on other training data: the same step on another sample list is other batches."""
        now = self.task.fingerprint
        if not saved:
            _logger.warning('%s records no data fingerprint (written before they were): resuming without checking '
                            'that the training data is the same', path)
        elif now and saved != now:
            raise ValueError(
                f'{path} was trained on other data: {saved["samples"]} samples (sample list sha256 '
                f'{saved["sha256"][:12]}), now {now["samples"]} ({now["sha256"][:12]}); resuming needs the data it '
                f'started with (a changed annotation file or image / label folder changes the batches); to train on '
                f'the new data, start a new output_dir from it (init={path})')

    # -- training ---------------------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """One optimizer step; the loss and the number of skipped (empty) samples of this rank's batch."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.config.channels_last:
            batch['image'] = batch['image'].contiguous(memory_format=torch.channels_last)
        self.scheduler.step_update(self.step)
        with self.autocast():
            loss = self.task.loss(self.module, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return loss.detach().float(), (1 - batch['valid']).sum()

    def evaluate(self, epoch: int) -> None:
        model = self.ema.module if self.ema is not None else self.model
        start = time.perf_counter()
        metrics = self.task.evaluate(model)
        _set_train_mode(self.model, self.config.freeze_bn)
        if self.ema is not None:
            self.ema.module.eval()
        self.metrics = json_safe(_metrics_record(metrics))
        self.log.write(dict(event='eval', step=self.step, epoch=epoch + 1, seconds=time.perf_counter() - start,
                            **self.metrics))

    def run(self) -> bool:
        """Train to the end or to max_steps; True when the end was reached."""
        config = self.config
        self.log.write(dict(event='start', step=self.step, task=self.task.name, samples=len(self.task.dataset),
                            world_size=self.context.world_size, global_batch=self.global_batch,
                            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                            config=dataclasses.asdict(config), data=self.task.scan))
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f'train-{self.task.name}', unit='step',
                   disable=not (config.progress and self.context.is_main), dynamic_ncols=True)
        interval = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, skipped samples
        interval_steps, interval_start = 0, time.perf_counter()
        try:
            for epoch in range(self.step // self.steps_per_epoch, config.epochs):
                self.sampler.start(epoch, (self.step - epoch * self.steps_per_epoch) * config.batch_size)
                batches = iter(self.loader)
                while (batch := self.next_batch(batches)) is not None:
                    loss, skipped = self.train_step(batch)
                    interval[0] += loss.double()
                    interval[1] += skipped.double()
                    interval_steps += 1
                    bar.update(1)
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    stop = config.max_steps is not None and self.step >= config.max_steps
                    if self.step % config.log_every == 0 or end_of_epoch or stop:
                        self.log_interval(interval, interval_steps, interval_start, epoch, bar)
                        interval.zero_()
                        interval_steps, interval_start = 0, time.perf_counter()
                    if end_of_epoch and self.task.evaluate is not None and config.eval_every and (
                            (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
                        self.evaluate(epoch)
                    if (stop or self.step == self.total_steps
                            or (config.checkpoint_every and self.step % config.checkpoint_every == 0)
                            or (not config.checkpoint_every and end_of_epoch)):
                        self.save()
                    if stop and self.step < self.total_steps:
                        return False
        finally:
            bar.close()
        return True

    def next_batch(self, batches: Iterator[dict[str, Tensor]]) -> dict[str, Tensor] | None:
        """This rank's next batch (None at the end of the epoch). A sample that cannot be loaded (policy 'error')
        stops every rank, but first the state of the last completed step is saved, so that the epoch's work is not
        lost, and the error names the file and says how to go on."""
        problem = None
        try:
            batch = next(batches)
        except StopIteration:
            return None  # every rank at once: the shards have the same length
        except BadSampleError as error:
            batch, problem = None, bad_sample_problem(error)
        if self.context.world_size > 1:  # one rank's bad sample stops all of them at the same step
            failed = all_reduce_sum(torch.tensor([float(problem is not None)], device=self.device), self.context)
            if problem is None and failed.item() > 0:
                problem = f'another process (of {self.context.world_size}) found a bad sample (its error names it)'
        if problem is None:
            return batch
        self.save()
        raise BadSampleError(
            f'{problem}; stopped before step {self.step + 1} of {self.total_steps} with the training state of step '
            f'{self.step} saved in {self.state_file}: fix or replace the file and rerun with --resume '
            "(resume='auto'), or rerun with --resume --on-bad-sample skip to leave such samples out")

    def log_interval(self, interval: Tensor, steps: int, start: float, epoch: int, bar: tqdm) -> None:
        totals = all_reduce_sum(interval, self.context)
        mean_loss = float(totals[0]) / (steps * self.context.world_size)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f'the training loss is {mean_loss} at step {self.step} (epoch {epoch + 1}); lower '
                                     'the learning rate or use bf16 instead of fp16')
        self.skipped += int(totals[1])
        elapsed = time.perf_counter() - start
        self.losses.append(mean_loss)
        lr = self.optimizer.param_groups[0]['lr']
        record = dict(step=self.step, epoch=epoch + 1, epoch_progress=self.step / self.steps_per_epoch, loss=mean_loss,
                      lr=lr, samples_per_second=steps * self.global_batch / elapsed if elapsed > 0 else None,
                      skipped_samples=self.skipped)
        if self.device.type == 'cuda':
            record['max_memory_gib'] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.log.write(record)
        bar.set_postfix(loss=f'{mean_loss:.4g}', lr=f'{lr:.3g}', refresh=False)


def run_training(task: TrainTask, config: TrainConfig, context: DistContext) -> TrainResult:
    """Train `task` as `config` says (already resolved against the task's recipe) on this rank."""
    torch.manual_seed(config.seed * 1000 + context.rank)  # dropout-like randomness only; the data has its own
    claim_output_dir(config, context.is_main)
    barrier(context)  # every rank sees the folder as rank 0 left it
    loop = _Loop(task, config, context)
    files: dict[str, str] = {}
    try:
        resume = resume_path(config)
        if resume is not None:
            loop.restore(resume)
        finished = loop.run() if loop.step < loop.total_steps else True
        final = loop.ema.module if loop.ema is not None else loop.model
        if finished:
            if context.is_main:
                files = task.export(final.state_dict(), loop.output_dir)
            barrier(context)
        loop.log.write(dict(event='end' if finished else 'stopped', step=loop.step, skipped_samples=loop.skipped,
                            files=files))
    finally:
        loop.log.close()
    if hasattr(final, 'set_grad_checkpointing'):
        final.set_grad_checkpointing(False)
    return TrainResult(
        output_dir=loop.output_dir, step=loop.step, epoch=loop.step // loop.steps_per_epoch, finished=finished,
        state_file=loop.state_file, files=files, losses=loop.losses, metrics=loop.metrics, skipped=loop.skipped,
        model=final.eval(), config=config,
    )
