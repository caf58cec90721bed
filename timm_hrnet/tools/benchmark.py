"""`timm-hrnet benchmark`: inference throughput and peak memory of one variant on random input.

Peak memory is `torch.cuda.max_memory_allocated` on GPU (tensors only, allocator cache excluded). On CPU it is the
growth of the process's peak resident set size (`getrusage` ru_maxrss) over the warm-up and timed steps, i.e. how
far running the model raised the process high-water mark above what model creation had already reached.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import torch
from timm.data import resolve_data_config

from timm_hrnet.classification import UnknownModelError, get_model
from timm_hrnet.fused import optimize_for_inference
from timm_hrnet.tools.cli_common import (
    CliError,
    amp_autocast,
    device_or_fail,
    image_size,
    positive_int,
    print_json,
)

__all__ = ['add_arguments', 'benchmark', 'run']

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def _executed_precision(device: torch.device, dtype: str, amp: bool) -> str:
    """What the kernels compute in: autocast runs convolutions and matmuls in the low precision and the rest in
    float32; on CPU the instruction set torch dispatches to says whether bf16 is native or emulated."""
    low = 'float16' if device.type == 'cuda' else 'bfloat16'
    precision = f'{low} convolutions/matmuls, float32 elsewhere (autocast)' if amp else dtype
    if device.type == 'cpu':
        return f'{precision} (torch CPU kernels: {torch.backends.cpu.get_cpu_capability()})'
    return precision


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024  # Linux reports KiB, macOS bytes


@torch.inference_mode()
def benchmark(
    model_name: str,
    *,
    batch_size: int = 32,
    img_size: int | None = None,
    channels_last: bool = False,
    compile_model: bool = False,
    fused: bool = False,
    amp: bool = False,
    dtype: str = 'float32',
    device: str | None = None,
    steps: int = 20,
    warmup_steps: int = 5,
) -> dict[str, Any]:
    """Time `steps` forward passes after `warmup_steps` untimed ones, with random weights (speed ignores them).

    `dtype` casts the model and its input (a fused model folds BatchNorm in float32 first); `amp` instead keeps a
    float32 model under autocast, so the two do not combine.
    """
    if dtype not in DTYPES:
        raise CliError(f'unknown dtype {dtype!r}; choose from {", ".join(DTYPES)}')
    if amp and dtype != 'float32':
        raise CliError('--amp runs a float32 model under autocast; use either --amp or --dtype, not both')
    device = device_or_fail(device)
    try:
        model = get_model(model_name, pretrained=False).eval()
    except UnknownModelError as error:
        raise CliError(str(error)) from error
    input_size = resolve_data_config({'img_size': img_size}, model=model)['input_size']
    if fused:
        model = optimize_for_inference(model, dtype=DTYPES[dtype])
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, DTYPES[dtype], memory_format=memory_format)
    if compile_model:
        model = torch.compile(model)
    batch = torch.randn(batch_size, *input_size, device=device, dtype=DTYPES[dtype]).to(memory_format=memory_format)

    def step() -> None:
        with amp_autocast(device, amp):
            model(batch)

    def synchronize() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _peak_rss_bytes()
    for _ in range(warmup_steps):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    elapsed = time.perf_counter() - start
    if device.type == 'cuda':
        peak_memory, memory_kind = torch.cuda.max_memory_allocated(device), 'cuda_max_memory_allocated'
    else:
        peak_memory, memory_kind = _peak_rss_bytes() - rss_before, 'peak_rss_growth'
    return {
        'model': model_name,
        'device': str(device),
        'batch_size': batch_size,
        'input_size': list(input_size),
        'channels_last': channels_last,
        'compile': compile_model,
        'fused': fused,
        'amp': amp,
        'dtype': dtype,
        'executed_precision': _executed_precision(device, dtype, amp),
        'steps': steps,
        'images_per_second': steps * batch_size / elapsed,
        'ms_per_batch': 1000 * elapsed / steps,
        'peak_memory_mib': peak_memory / 2**20,
        'peak_memory_kind': memory_kind,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `timm-hrnet benchmark`."""
    parser.add_argument('--model', required=True, help='timm name or mmpretrain HRNet name')
    parser.add_argument('--batch-size', type=positive_int, default=32, help='images per forward pass')
    parser.add_argument('--img-size', type=image_size, help='square input size; default: from the pretrained cfg')
    parser.add_argument('--channels-last', action='store_true', help='run in channels_last memory format')
    parser.add_argument('--compile', action='store_true', help='torch.compile the model')
    parser.add_argument('--fused', action='store_true', help='use timm_hrnet.optimize_for_inference (BN folding)')
    parser.add_argument('--amp', action='store_true', help='autocast: float16 on CUDA, bfloat16 on CPU')
    parser.add_argument('--dtype', choices=list(DTYPES), default='float32',
                        help='cast the model and input (e.g. bfloat16 with --fused: fused kernels in bf16 on CPU)')
    parser.add_argument('--device', help='default: cuda when available, else cpu')
    parser.add_argument('--steps', type=positive_int, default=20, help='timed forward passes (after 5 warm-up passes)')
    parser.add_argument('--json', action='store_true', help='print the result as JSON')


def run(args: argparse.Namespace) -> int:
    """Run `timm-hrnet benchmark` and print the result."""
    try:
        result = benchmark(
            args.model, batch_size=args.batch_size, img_size=args.img_size, channels_last=args.channels_last,
            compile_model=args.compile, fused=args.fused, amp=args.amp, dtype=args.dtype, device=args.device,
            steps=args.steps,
        )
    except ValueError as error:  # the model refusing the input
        raise CliError(f'{args.model} cannot run on this input: {error}') from error
    if args.json:
        print_json(json.dumps(result, indent=2))
    else:
        cuda_memory = result['peak_memory_kind'] == 'cuda_max_memory_allocated'
        memory_label = 'CUDA max allocated' if cuda_memory else 'peak RSS growth'
        print(f'{result["model"]} on {result["device"]}, batch {result["batch_size"]}, input {result["input_size"]}: '
              f'{result["images_per_second"]:.1f} images/s, {result["ms_per_batch"]:.2f} ms/batch, '
              f'{memory_label} {result["peak_memory_mib"]:.1f} MiB; runs in {result["executed_precision"]}')
    return 0
