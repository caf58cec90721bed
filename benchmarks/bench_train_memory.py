"""Training step cost: peak activation memory and forward+backward time, with and without gradient checkpointing.

Compares timm's built-in HRNet (`timm.models.hrnet.<name>()`, which has no gradient checkpointing) with ours, plain
and with `set_grad_checkpointing(True)`, all with the same weights, in ONE process with interleaved timing rounds
(median reported).

Peak activation memory is the peak of live tensor bytes during one forward+backward step above what was live
before it. Parameters and their `.grad` buffers already exist then (a warm-up step creates the grads, which are
zeroed, not freed), so the number is what the step itself needs: saved activations, recomputed segments and
transient gradient buffers. On CUDA it is `torch.cuda.max_memory_allocated` minus `memory_allocated` before the
step. On CPU, where PyTorch keeps no allocator statistics, it comes from the profiler's memory events
(`profile_memory=True`): every tensor allocation and free of the step in time order, their running sum, its maximum.

    python benchmarks/bench_train_memory.py --quick      # smoke run: batch 2, one round
    python benchmarks/bench_train_memory.py              # hrnet_w18, batch 16, 224x224, 5 rounds
    python benchmarks/bench_train_memory.py --device cuda --amp --channels-last --batch-size 128   # GPU training
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable

import timm
import timm.models.hrnet as timm_builtin_hrnet
import torch
import torch.nn.functional as F
from bench_common import machine_line
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints in timm)

VARIANTS = ('timm', 'ours', 'ours_checkpointing', 'ours_selective')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='hrnet_w18')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--rounds', type=int, default=5, help='interleaved timing rounds (median reported)')
    parser.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch default)')
    parser.add_argument('--amp', action='store_true', help='bfloat16 autocast (weights and gradients stay float32)')
    parser.add_argument('--channels-last', action='store_true', help='channels_last weights and input')
    parser.add_argument('--quick', action='store_true', help='smoke run: batch 2, one round')
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.rounds = 2, 1
    if min(args.batch_size, args.rounds) < 1:
        parser.error('--batch-size and --rounds must be positive')
    return args


def build_models(name: str, device: torch.device, memory_format: torch.memory_format) -> dict[str, nn.Module]:
    ours = timm.create_model(name)
    builtin = getattr(timm_builtin_hrnet, name)()
    builtin.load_state_dict(ours.state_dict())
    checkpointed = copy.deepcopy(ours)
    checkpointed.set_grad_checkpointing(True)
    selective = copy.deepcopy(ours)
    selective.set_grad_checkpointing(True, selective=True)
    models = {'timm': builtin, 'ours': ours, 'ours_checkpointing': checkpointed, 'ours_selective': selective}
    return {variant: model.to(device, memory_format=memory_format).train() for variant, model in models.items()}


def make_step(model: nn.Module, x: Tensor, target: Tensor, amp: bool) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=False)
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with autocast:
            loss = F.cross_entropy(model(x), target)
        loss.backward()
    return step


def peak_step_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak live tensor bytes during one step, above those live before it (see the module docstring)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = [e for e in profiler.profiler.kineto_results.events() if e.name() == '[memory]']
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def median_seconds(steps: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, float]:
    """The median time of each step over `rounds`, the order rotated every round so no step always runs first."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for round_index in range(rounds):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            seconds[name].append(timed(steps[name], device))
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    models = build_models(args.model, device, memory_format)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device).to(memory_format=memory_format)
    target = torch.randint(0, 1000, (args.batch_size,), device=device)
    steps = {variant: make_step(model, x, target, args.amp) for variant, model in models.items()}
    for step in steps.values():
        step()  # warm-up, and creates the .grad buffers the measured steps reuse
    peaks = {variant: peak_step_bytes(step, device) for variant, step in steps.items()}
    median = median_seconds(steps, args.rounds, device)
    where = machine_line(device)
    precision = 'AMP bf16' if args.amp else 'fp32'
    layout = ', channels_last' if args.channels_last else ''
    print(f'{args.model}, batch {args.batch_size}, {args.img_size}x{args.img_size}, {precision}{layout} on {device} '
          f'({where}), {args.rounds} rounds')
    print(f'{"variant":<20}{"peak act. MiB":>14}{"vs ours":>9}{"step s":>9}{"vs ours":>9}{"img/s":>9}{"x timm":>8}')
    for variant in steps:
        print(f'{variant:<20}{peaks[variant] / 2**20:>14.1f}{peaks[variant] / peaks["ours"] - 1:>+9.0%}'
              f'{median[variant]:>9.3f}{median[variant] / median["ours"] - 1:>+9.0%}'
              f'{args.batch_size / median[variant]:>9.1f}{median["timm"] / median[variant]:>8.2f}')


if __name__ == '__main__':
    main()
