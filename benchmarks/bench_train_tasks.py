"""Training step cost of the task models: steps/s and peak step memory of HRNet-W32 pose at 256x192, HRNetV2-W48
segmentation and HRNetV2-W48 + OCR at 512x1024 crops, without and with gradient checkpointing (full and selective
recomputation).

A step is what `timm_hrnet.tasks.training` runs per batch: forward, the task loss (JointsMSELoss on Gaussian-like
targets with joint weights; cross-entropy ignoring 255, logits upsampled to the labels; OCR: the OCR logits' loss plus
0.4 x the auxiliary logits', as train-seg --head ocr), backward and the recipe's
optimizer step (Adam for pose, SGD with momentum and weight decay for segmentation). Data loading is left out
(random batches made once). Variants are timed in interleaved rounds after a warm-up step (median reported), in one
process, all with the same weights.

Peak memory is the peak of live tensor bytes during one step above what was live before it (parameters, gradients
and optimizer state already exist then): on CUDA `max_memory_allocated` minus `memory_allocated`, on CPU the running
sum of the profiler's memory events (as benchmarks/bench_train_memory.py).

    python benchmarks/bench_train_tasks.py                          # CPU, batch 2, both tasks, 2 timed rounds
    python benchmarks/bench_train_tasks.py --tasks pose --rounds 5
    python benchmarks/bench_train_tasks.py --tasks seg ocr --modes none   # the cost of the OCR head
    python benchmarks/bench_train_tasks.py --device cuda --amp --batch-size 8 --rounds 10
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
from collections.abc import Callable

import torch
from bench_common import machine_line
from bench_train_memory import median_seconds, peak_step_bytes  # the same measurement as the classifier benchmark
from torch import Tensor, nn

from timm_hrnet.tasks.pose import HRNetPose
from timm_hrnet.tasks.segmentation import HRNetOCR, HRNetSeg
from timm_hrnet.tasks.training.losses import JointsMSELoss, SegCrossEntropy
from timm_hrnet.variants import resolve_variant

MODES = ('none', 'full', 'selective')
TASKS = {
    # task: (variant, input (height, width), what)
    'pose': ('hrnet_w32', (256, 192), 'HRNet-W32 pose, 17 joints'),
    'seg': ('hrnet_w48', (512, 1024), 'HRNetV2-W48 segmentation, 19 classes'),
    'ocr': ('hrnet_w48', (512, 1024), 'HRNetV2-W48 + OCR segmentation, 19 classes'),
}
AUX_WEIGHT = 0.4  # the official OCR recipe's auxiliary loss weight


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', nargs='+', choices=sorted(TASKS), default=['pose', 'seg'])
    parser.add_argument('--modes', nargs='+', choices=MODES, default=list(MODES), help='gradient checkpointing')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=2, help='interleaved timed rounds (median reported)')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--amp', action='store_true', help='bf16 autocast (weights, grads and optimizer fp32)')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch default)')
    parser.add_argument('--no-memory', action='store_true', help='skip the (slow on CPU) memory-profiled step')
    args = parser.parse_args()
    if min(args.batch_size, args.rounds) < 1:
        parser.error('--batch-size and --rounds must be positive')
    return args


def build(task: str) -> tuple[nn.Module, Callable[[nn.Module, dict[str, Tensor]], Tensor], str]:
    """The model, its loss of a batch, and the recipe's optimizer name."""
    variant, _, _ = TASKS[task]
    spec = resolve_variant(variant)
    if task == 'pose':
        model: nn.Module = HRNetPose(dataclasses.replace(spec, multi_scale_output=False), 17)
        criterion = JointsMSELoss()
        return model, lambda m, b: criterion(m(b['image']), b['target'], b['target_weight']), 'adam'
    seg_loss = SegCrossEntropy()
    if task == 'ocr':
        model = HRNetOCR(dataclasses.replace(spec, upsample='bilinear'), 19)

        def ocr_loss(m: nn.Module, b: dict[str, Tensor]) -> Tensor:
            logits, aux = m(b['image'], aux=True)
            return seg_loss(logits, b['label']) + AUX_WEIGHT * seg_loss(aux, b['label'])
        return model, ocr_loss, 'sgd'
    model = HRNetSeg(dataclasses.replace(spec, upsample='bilinear'), 19)
    return model, lambda m, b: seg_loss(m(b['image']), b['label']), 'sgd'


def make_batch(task: str, batch_size: int, device: torch.device, memory_format: torch.memory_format,
               ) -> dict[str, Tensor]:
    _, (height, width), _ = TASKS[task]
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(batch_size, 3, height, width, generator=generator)
    if task == 'pose':
        batch = dict(image=image, target=torch.rand(batch_size, 17, height // 4, width // 4, generator=generator),
                     target_weight=(torch.rand(batch_size, 17, 1, generator=generator) > 0.2).float())
    else:
        labels = torch.randint(0, 19, (batch_size, height, width), generator=generator)
        labels[:, :16] = 255
        batch = dict(image=image, label=labels)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch['image'] = batch['image'].contiguous(memory_format=memory_format)
    return batch


def make_step(model: nn.Module, loss: Callable[[nn.Module, dict[str, Tensor]], Tensor], batch: dict[str, Tensor],
              optimizer: torch.optim.Optimizer, amp: bool) -> Callable[[], None]:
    def step() -> None:
        autocast = torch.autocast(batch['image'].device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with autocast:
            value = loss(model, batch)
        optimizer.zero_grad(set_to_none=False)
        value.backward()
        optimizer.step()
    return step


def bench_task(task: str, args: argparse.Namespace, device: torch.device) -> None:
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    base, loss, optimizer_name = build(task)
    batch = make_batch(task, args.batch_size, device, memory_format)
    steps = {}
    for mode in args.modes:
        model = copy.deepcopy(base).to(device, memory_format=memory_format).train()
        if mode != 'none':
            model.set_grad_checkpointing(True, selective=mode == 'selective')
        optimizer = (torch.optim.Adam(model.parameters(), lr=1e-3) if optimizer_name == 'adam'
                     else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4))
        steps[mode] = make_step(model, loss, batch, optimizer, args.amp)
    del base
    for step in steps.values():
        step()  # warm-up: creates the gradients and the optimizer state the measured steps reuse
    peaks = {mode: None if args.no_memory else peak_step_bytes(step, device) for mode, step in steps.items()}
    median = median_seconds(steps, args.rounds, device)
    _, (height, width), what = TASKS[task]
    first = next(iter(steps))
    print(f'\n{what}, {height}x{width}, batch {args.batch_size}, {optimizer_name}, '
          f'{"AMP bf16" if args.amp else "fp32"}{", channels_last" if args.channels_last else ""}, '
          f'{args.rounds} rounds')
    print(f'{"checkpointing":<15}{"step s":>9}{"steps/s":>9}{"img/s":>8}{"peak MiB":>11}{"vs " + first:>10}'
          f'{"time vs":>9}')
    for mode in steps:
        peak = peaks[mode]
        memory = f'{peak / 2**20:>11.0f}' if peak is not None else f'{"-":>11}'
        ratio = f'{peak / peaks[first] - 1:>+10.0%}' if peak is not None and peaks[first] else f'{"-":>10}'
        print(f'{mode:<15}{median[mode]:>9.3f}{1 / median[mode]:>9.3f}{args.batch_size / median[mode]:>8.2f}'
              f'{memory}{ratio}{median[mode] / median[first] - 1:>+9.0%}')


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f'torch {torch.__version__} on {device} ({machine_line(device)})')
    for task in args.tasks:
        bench_task(task, args, device)


if __name__ == '__main__':
    main()
