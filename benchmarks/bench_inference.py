"""Inference throughput: timm_hrnet (eager, fused, fused + channels_last, fused + compile) vs timm's built-in HRNet.

Everything runs in ONE process and the variants are timed in interleaved rounds (the order rotates every round), so
a slow phase of a shared machine hits all of them alike; each variant gets untimed warm-up calls first (that is
where torch.compile compiles) and the reported time is the median over rounds. The built-in model is
`timm.models.hrnet.<name>()` called directly (`import timm_hrnet` replaces the registry entries) and gets our
model's weights, so every variant computes the same function; the max relative output difference to the built-in
is printed as a sanity check. FLOPs are counted once with torch.utils.flop_counter (convolutions and matmuls, per
image); the achieved GFLOP/s is compared with a square matmul of the same dtype timed in the same rounds.

    python benchmarks/bench_inference.py --quick                  # smoke run: hrnet_w18, batch 8, 2 rounds, no compile
    python benchmarks/bench_inference.py                          # CPU fp32, hrnet_w18 + hrnet_w48, batch 1 and 8
    python benchmarks/bench_inference.py --device cuda            # CUDA bf16 + fp16, batch 64 and 256
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import timm
import timm.models.hrnet as timm_builtin_hrnet
import torch
import torch._inductor.config
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints in timm)
from timm_hrnet.fuse import optimize_for_inference

VARIANTS = (
    'timm_eager', 'timm_channels_last', 'timm_compile',
    'ours_eager', 'ours_fused', 'ours_fused_channels_last', 'ours_fused_compile',
)
QUICK_VARIANTS = tuple(v for v in VARIANTS if not v.endswith('compile'))
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


@dataclass
class Result:
    model: str
    variant: str
    batch_size: int
    dtype: str
    device: str
    ms_per_batch: float
    images_per_second: float
    speedup_vs_timm_eager: float
    speedup_vs_timm_channels_last: float | None
    gflops_per_second: float
    fraction_of_matmul_peak: float
    max_rel_diff_vs_timm: float
    warmup_seconds: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['hrnet_w18', 'hrnet_w48'])
    parser.add_argument('--batch-sizes', nargs='+', type=int, help='default: 1 8 on CPU, 64 256 on CUDA')
    parser.add_argument('--dtypes', nargs='+', choices=list(DTYPES), help='default: float32 on CPU, bf16+fp16 on CUDA')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--variants', nargs='+', choices=VARIANTS, help='default: all (--quick: all but compile)')
    parser.add_argument('--rounds', type=int, default=7, help='interleaved timing rounds (median reported)')
    parser.add_argument('--iters', type=int, default=3, help='timed calls per variant per round')
    parser.add_argument('--warmup', type=int, default=3, help='untimed calls per variant before the rounds')
    parser.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch default)')
    parser.add_argument('--no-freezing', action='store_true',
                        help='compile without inductor freezing (freezing constant-folds weights, on by default)')
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: first model only, batch 8 (64 on CUDA), 2 rounds of 1 call, no compile')
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args()
    on_cuda = args.device.startswith('cuda')
    if args.quick:
        args.models = args.models[:1]
        args.batch_sizes = args.batch_sizes or [64 if on_cuda else 8]
        args.rounds, args.iters, args.warmup = 2, 1, 1
        args.variants = args.variants or list(QUICK_VARIANTS)
    args.batch_sizes = args.batch_sizes or ([64, 256] if on_cuda else [1, 8])
    args.dtypes = args.dtypes or (['bfloat16', 'float16'] if on_cuda else ['float32'])
    args.variants = args.variants or list(VARIANTS)
    if min(args.rounds, args.iters, args.warmup, *args.batch_sizes) < 1:
        parser.error('--rounds, --iters, --warmup and --batch-sizes must be positive')
    return args


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def build_variants(
        name: str, variants: list[str], device: torch.device, dtype: torch.dtype,
) -> dict[str, tuple[Callable[[Tensor], Tensor], bool]]:
    """Each variant as (callable, wants a channels_last input). All share the same weights."""
    ours = timm.create_model(name).eval()
    builtin = getattr(timm_builtin_hrnet, name)().eval()
    builtin.load_state_dict(ours.state_dict())

    def prepared(model: nn.Module, channels_last: bool) -> nn.Module:
        model = model.to(device=device, dtype=dtype)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    builders: dict[str, Callable[[], tuple[Callable[[Tensor], Tensor], bool]]] = {
        'timm_eager': lambda: (prepared(copy.deepcopy(builtin), False), False),
        'timm_channels_last': lambda: (prepared(copy.deepcopy(builtin), True), True),
        'timm_compile': lambda: (torch.compile(prepared(copy.deepcopy(builtin), True), dynamic=False), True),
        'ours_eager': lambda: (prepared(copy.deepcopy(ours), False), False),
        'ours_fused': lambda: (prepared(optimize_for_inference(ours), False), False),
        'ours_fused_channels_last': lambda: (prepared(optimize_for_inference(ours, channels_last=True), True), True),
        'ours_fused_compile': lambda: (
            torch.compile(prepared(optimize_for_inference(ours, channels_last=True), True), dynamic=False), True),
    }
    return {variant: builders[variant]() for variant in variants}


def count_flops_per_image(model: Callable[[Tensor], Tensor], x: Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / x.shape[0]


def matmul_call(device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], Tensor], float]:
    """A square matmul big enough to run near the machine's peak, and its FLOPs."""
    n = 8192 if device.type == 'cuda' else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: a @ b), 2.0 * n**3


def time_calls(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Seconds per call, averaged over `iters` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def max_rel_diff(actual: Tensor, expected: Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


@torch.inference_mode()
def bench_case(name: str, batch_size: int, dtype_name: str, args: argparse.Namespace) -> list[Result]:
    """All variants of one model at one batch size and dtype, interleaved."""
    device, dtype = torch.device(args.device), DTYPES[dtype_name]
    variants = build_variants(name, args.variants, device, dtype)
    x = torch.randn(batch_size, 3, args.img_size, args.img_size, device=device, dtype=dtype)
    inputs = {False: x, True: x.contiguous(memory_format=torch.channels_last)}
    reference_variant = 'timm_eager' if 'timm_eager' in variants else next(iter(variants))
    reference = variants[reference_variant][0](x)
    flops_per_image = count_flops_per_image(variants[reference_variant][0], x)
    matmul, matmul_flops = matmul_call(device, dtype)

    calls: dict[str, Callable[[], object]] = {'matmul': matmul}
    warmup_seconds: dict[str, float] = {}
    diffs: dict[str, float] = {}
    for variant, (model, channels_last) in variants.items():
        calls[variant] = lambda model=model, channels_last=channels_last: model(inputs[channels_last])
        warmup_seconds[variant] = time_calls(calls[variant], args.warmup, device) * args.warmup
        diffs[variant] = max_rel_diff(calls[variant](), reference)
    time_calls(matmul, args.warmup, device)

    order = list(calls)
    seconds: dict[str, list[float]] = {key: [] for key in order}
    for round_index in range(args.rounds):
        shift = round_index % len(order)
        for key in order[shift:] + order[:shift]:
            seconds[key].append(time_calls(calls[key], args.iters, device))
    median = {key: statistics.median(values) for key, values in seconds.items()}
    matmul_flops_per_second = matmul_flops / median['matmul']

    results = []
    for variant in variants:
        images_per_second = batch_size / median[variant]
        flops_per_second = flops_per_image * images_per_second
        results.append(Result(
            model=name, variant=variant, batch_size=batch_size, dtype=dtype_name, device=str(device),
            ms_per_batch=1000 * median[variant],
            images_per_second=images_per_second,
            speedup_vs_timm_eager=median['timm_eager'] / median[variant] if 'timm_eager' in median else float('nan'),
            speedup_vs_timm_channels_last=(
                median['timm_channels_last'] / median[variant] if 'timm_channels_last' in median else None),
            gflops_per_second=flops_per_second / 1e9,
            fraction_of_matmul_peak=flops_per_second / matmul_flops_per_second,
            max_rel_diff_vs_timm=diffs[variant],
            warmup_seconds=warmup_seconds[variant],
        ))
    print(f'\n{name}, batch {batch_size}, {dtype_name} on {device}: {flops_per_image / 1e9:.2f} GFLOP/image, '
          f'matmul peak {matmul_flops_per_second / 1e9:.0f} GFLOP/s, {args.rounds} rounds x {args.iters} calls')
    print(f'{"variant":<26}{"ms/batch":>10}{"img/s":>10}{"x eager":>9}{"x cl":>7}{"GFLOP/s":>9}{"peak":>7}'
          f'{"diff":>10}{"warmup s":>10}')
    for r in results:
        vs_cl = '' if r.speedup_vs_timm_channels_last is None else f'{r.speedup_vs_timm_channels_last:.2f}'
        print(f'{r.variant:<26}{r.ms_per_batch:>10.1f}{r.images_per_second:>10.1f}{r.speedup_vs_timm_eager:>9.2f}'
              f'{vs_cl:>7}{r.gflops_per_second:>9.1f}{r.fraction_of_matmul_peak:>7.0%}'
              f'{r.max_rel_diff_vs_timm:>10.1e}{r.warmup_seconds:>10.1f}')
    return results


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_freezing:
        torch._inductor.config.freezing = True
    print(f'torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, '
          f'input {args.img_size}x{args.img_size}')
    results: list[Result] = []
    for name in args.models:
        for dtype_name in args.dtypes:
            for batch_size in args.batch_sizes:
                results.extend(bench_case(name, batch_size, dtype_name, args))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([asdict(r) for r in results], f, indent=2)


if __name__ == '__main__':
    main()
