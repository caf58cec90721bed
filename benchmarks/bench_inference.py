"""Inference throughput: timm_hrnet (eager, fused, fused + channels_last, fused + compile) vs timm's built-in HRNet,
and vs onnxruntime / OpenVINO on exported files.

Everything runs in ONE process and the variants are timed in interleaved rounds (the order rotates every round), so
a slow phase of a shared machine hits all of them alike; each variant gets untimed warm-up calls first (that is
where torch.compile compiles and CUDA graphs are captured) and the reported time is the median over rounds. The
built-in model is `timm.models.hrnet.<name>()` called directly (`import timm_hrnet` replaces the registry entries)
and gets our model's weights, so every variant computes the same function. The baseline is the built-in's best
compiled mode (`torch.compile`, and on CUDA also with CUDA graphs); `diff` is each variant's max relative output
difference to the built-in run eagerly in float32, so in bfloat16 it compares the fused model's rounding with the
plain bf16 model's (`timm_eager`, `ours_eager`). FLOPs are counted once with torch.utils.flop_counter
(convolutions and matmuls, per image); the achieved GFLOP/s is compared with a square matmul of the same dtype
timed in the same rounds.

`--task pose` / `--task seg` / `--task ocr` time the task models instead (HRNetPose W32 with 17 COCO joints at
256x192, HRNetSeg W48 and HRNetOCR W48 (OCR widths 512 / 256) with 19 Cityscapes classes at 512x1024; random weights,
random BatchNorm statistics). timm has no such models,
so there are no `timm_*` variants: the deployer's baseline (`x OV`) is OpenVINO on a plain `torch.onnx.export` of
the unfused task model (`openvino_plain_export`), and `diff` compares with that model run eagerly in float32.

    python benchmarks/bench_inference.py --quick                  # smoke run: hrnet_w18, batch 8, 2 rounds, no compile
    python benchmarks/bench_inference.py                          # CPU bf16 + fp32, hrnet_w18 + hrnet_w48, batch 1, 8
    python benchmarks/bench_inference.py --task pose              # pose W32 256x192, CPU bf16 + fp32, batch 1, 8
    python benchmarks/bench_inference.py --task seg               # seg W48 512x1024 (--img-size H W to change)
    python benchmarks/bench_inference.py --task ocr               # HRNet-W48 + OCR 512x1024
    python benchmarks/bench_inference.py --device cuda            # CUDA bf16, batch 1 and 256 (see run_cuda.sh)
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import timm
import timm.models.hrnet as timm_builtin_hrnet
import torch
import torch._inductor.config
from bench_common import machine_line, randomize_batchnorm
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints in timm)
from timm_hrnet import HRNetOCR, HRNetPose, HRNetSeg
from timm_hrnet.export import compile_openvino, export
from timm_hrnet.fused import optimize_for_inference
from timm_hrnet.int8 import describe_precisions
from timm_hrnet.tools.benchmark import DTYPES
from timm_hrnet.variants import resolve_variant

VARIANTS = (
    'timm_eager', 'timm_channels_last', 'timm_compile', 'timm_compile_cudagraphs',
    'ours_eager', 'ours_fused', 'ours_fused_channels_last', 'ours_fused_compile',
    'ours_fused_compile_max_autotune', 'ours_fused_onednn_graph',
    'ours_fused_cudagraph', 'ours_fused_compile_cudagraphs',
    'ours_padded_channels_last', 'ours_padded_compile', 'ours_padded_cudagraph',
    'ort_timm_export', 'ort_plain_export', 'ort_ours', 'ort_ours_int8',
    'openvino_timm_export', 'openvino_plain_export', 'openvino_ours', 'openvino_ours_int8',
    'openvino_timm_export_static', 'openvino_plain_export_static', 'openvino_ours_static', 'openvino_ours_int8_static',
)
TASKS = ('classify', 'pose', 'seg', 'ocr')
# per task: the variants that apply (timm has no pose/seg HRNet, so tasks compare with a plain ONNX export of the
# unfused model instead), the default models and input size (height, width)
TASK_VARIANTS = {'classify': tuple(v for v in VARIANTS if 'plain_export' not in v)}
TASK_VARIANTS['pose'] = TASK_VARIANTS['seg'] = TASK_VARIANTS['ocr'] = tuple(
    v for v in VARIANTS if 'timm' not in v and 'padded' not in v)
TASK_MODELS = {'classify': ['hrnet_w18', 'hrnet_w48'], 'pose': ['hrnet_w32'], 'seg': ['hrnet_w48'],
               'ocr': ['hrnet_w48']}
TASK_IMG_SIZE = {'classify': (224, 224), 'pose': (256, 192), 'seg': (512, 1024), 'ocr': (512, 1024)}
# deployment runtimes on CPU, run on exported files (skipped with a note when the runtime is not installed):
# onnxruntime in float32 only (it has no bf16 convolutions on CPU), OpenVINO in the case's dtype (bf16 as its
# precision hint), int8 from random calibration inputs (speed only; accuracy: benchmarks/bench_int8_accuracy.py);
# `_static`: the batch and size fixed to the case's (ours: `export(..., dynamic=False, batch_size=...)`, the plain
# exports reshaped when compiled), as a deployment serving one shape would run them
RUNTIME_VARIANTS = tuple(v for v in VARIANTS if v.startswith(('ort_', 'openvino_')))
RUNTIME_MODULE = {'ort': 'onnxruntime', 'openvino': 'openvino'}
# what a deployer would pick: OpenVINO on the built-in's ONNX export, or on the unfused task model's
DEPLOY_BASELINE = {'classify': 'openvino_timm_export', 'pose': 'openvino_plain_export', 'seg': 'openvino_plain_export',
                   'ocr': 'openvino_plain_export'}
CUDA_ONLY = tuple(v for v in VARIANTS if v.endswith(('cudagraph', 'cudagraphs')))
BASELINES = ('timm_compile', 'timm_compile_cudagraphs')  # the built-in's compiled modes; the fastest is the baseline


@dataclass
class Result:
    model: str
    variant: str
    batch_size: int
    dtype: str
    device: str
    ms_per_batch: float
    images_per_second: float
    baseline: str | None
    speedup_vs_baseline: float | None
    speedup_vs_timm_eager: float | None
    speedup_vs_timm_channels_last: float | None
    speedup_vs_openvino: float | None
    gflops_per_second: float
    fraction_of_matmul_peak: float
    max_rel_diff_vs_fp32: float
    warmup_seconds: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=TASKS, default='classify',
                        help='classifiers (vs timm\'s built-in), pose (HRNetPose, COCO), seg (HRNetSeg, Cityscapes) '
                             'or ocr (HRNetOCR, Cityscapes)')
    parser.add_argument('--models', nargs='+',
                        help='default: hrnet_w18 hrnet_w48 (classify), hrnet_w32 (pose), hrnet_w48 (seg)')
    parser.add_argument('--batch-sizes', nargs='+', type=int, help='default: 1 8 on CPU, 1 256 on CUDA')
    parser.add_argument('--dtypes', '--dtype', nargs='+', choices=list(DTYPES),
                        help='default: bfloat16 float32 on CPU, bfloat16 on CUDA')
    parser.add_argument('--img-size', nargs='+', type=int,
                        help='H [W] (one value: square); default 224 (classify), 256 192 (pose), 512 1024 (seg)')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--variants', nargs='+', choices=VARIANTS,
                        help='default: all on CUDA; on CPU all but CUDA graphs and padding (--quick: no compile)')
    parser.add_argument('--branch-widths', nargs='+', type=int,
                        help='widths of the ours_padded_* variants; default: each branch rounded up to a multiple '
                             'of 8, 16, 32, 64 (W18: 24 48 96 192)')
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
    if args.img_size is not None and len(args.img_size) not in (1, 2):
        parser.error('--img-size takes one or two values: H [W]')
    args.img_size = TASK_IMG_SIZE[args.task] if args.img_size is None else tuple((args.img_size * 2)[:2])
    args.models = args.models or TASK_MODELS[args.task]
    applicable = TASK_VARIANTS[args.task]
    if wrong := [v for v in args.variants or () if v not in applicable]:
        parser.error(f'{", ".join(wrong)}: not a --task {args.task} variant')
    # zero-padded branches (branch_widths) feed GPU tensor cores better; on CPU they only add work, so not by default
    cpu_default = [v for v in applicable if v not in CUDA_ONLY and 'padded' not in v]
    if args.quick:
        args.models = args.models[:1]
        args.batch_sizes = args.batch_sizes or [64 if on_cuda else 8]
        args.rounds, args.iters, args.warmup = 2, 1, 1
        args.variants = args.variants or [v for v in cpu_default if 'compile' not in v and 'onednn' not in v]
    args.batch_sizes = args.batch_sizes or ([1, 256] if on_cuda else [1, 8])
    args.dtypes = args.dtypes or (['bfloat16'] if on_cuda else ['bfloat16', 'float32'])
    # oneDNN Graph is a CPU fuser
    args.variants = args.variants or list([v for v in applicable if 'onednn' not in v] if on_cuda else cpu_default)
    missing = {v for v in args.variants if v in RUNTIME_VARIANTS and not _installed(RUNTIME_MODULE[v.split('_')[0]])}
    if missing:
        print(f'skipped (runtime not installed): {", ".join(sorted(missing))}')
    args.variants = [v for v in args.variants if v not in missing and not (on_cuda and v in RUNTIME_VARIANTS)]
    if not on_cuda and set(args.variants) & set(CUDA_ONLY):
        parser.error(f'{", ".join(sorted(set(args.variants) & set(CUDA_ONLY)))}: CUDA graphs need --device cuda')
    if min(args.rounds, args.iters, args.warmup, *args.batch_sizes) < 1:
        parser.error('--rounds, --iters, --warmup and --batch-sizes must be positive')
    return args


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def runtime_variant(variant: str, reference: nn.Module, ours: nn.Module, dtype_name: str, work: Path,
                    batch_size: int, img_size: tuple[int, int]) -> Callable[[Tensor], Tensor] | None:
    """An exported file of the reference model (the built-in classifier or the unfused task model: plain ONNX
    export, as a deployer would make it) or of ours (`timm_hrnet.export`: fused) running in onnxruntime / OpenVINO
    on float32 NCHW input; None where the variant does not apply to this dtype (onnxruntime has no CPU bf16)."""
    runtime, source = variant.split('_', 1)
    static = source.endswith('_static')
    source = source.removesuffix('_static')
    if runtime == 'ort' and dtype_name != 'float32' and not source.endswith('int8'):
        return None
    int8 = source.endswith('int8')
    path = work / f'{variant}.{"onnx" if runtime == "ort" else "xml"}'
    fmt = 'onnx' if runtime == 'ort' else 'openvino'
    if source in ('timm_export', 'plain_export'):
        onnx_path = work / f'{variant}.onnx'
        example = torch.randn(1, 3, *img_size)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(copy.deepcopy(reference).float().cpu(), (example,), str(onnx_path), dynamo=False,
                              input_names=['image'], dynamic_axes={'image': {0: 'batch'}})
        if fmt == 'openvino':
            import openvino
            openvino.save_model(openvino.convert_model(str(onnx_path)), str(path))
    else:
        calibration = [torch.randn(1, 3, *img_size) for _ in range(max(8, batch_size))] if int8 else None
        export(ours, path, fmt, dtype='int8' if int8 else 'float32', input_size=img_size, dynamic=not static,
               batch_size=batch_size if static else 1, calibration=calibration, check=False)
    threads = torch.get_num_threads()
    if fmt == 'onnx':
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        print(f'{variant} executes {"int8 (QDQ pairs fused into int8 kernels)" if int8 else "float32"} in onnxruntime')
        return lambda x: torch.from_numpy(session.run(None, {'image': x.numpy()})[0])
    import openvino
    core = openvino.Core()
    ov_model = core.read_model(str(path))
    if static and ov_model.inputs[0].get_partial_shape().is_dynamic:
        ov_model.reshape([batch_size, 3, *img_size])
    precision = 'bf16' if dtype_name == 'bfloat16' else 'f32'
    compiled = compile_openvino(ov_model, {'INFERENCE_PRECISION_HINT': precision, 'INFERENCE_NUM_THREADS': threads})
    actual = compiled.get_property('INFERENCE_PRECISION_HINT').to_string()
    if actual != precision:  # a CPU without bf16 instructions runs the bf16 hint in f32
        print(f'{variant}: OpenVINO runs precision {actual} for the requested {precision} on this CPU')
    print(f'{variant} ({dtype_name}) executes {describe_precisions(compiled)}')
    return lambda x: torch.from_numpy(compiled(x.numpy())[0])


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def cuda_graphed(model: nn.Module, example: Tensor) -> Callable[[Tensor], Tensor]:
    """`model` captured once as a CUDA graph for inputs shaped like `example`: a call copies its input into the
    graph's input buffer and replays the graph (one launch instead of one per kernel); the output is overwritten
    by the next call."""
    static_input = example.clone()
    side = torch.cuda.Stream(device=example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires (cuDNN picks its kernels here)
        for _ in range(3):
            model(static_input)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = model(static_input)

    def replay(x: Tensor) -> Tensor:
        static_input.copy_(x)
        graph.replay()
        return static_output
    return replay


def tensor_core_widths(model: nn.Module) -> list[int]:
    """Branch widths rounded up to multiples of 8, 16, 32, 64 (W18's 18, 36, 72, 144 become 24, 48, 96, 192)."""
    return [math.ceil(c / (8 << i)) * (8 << i) for i, c in enumerate(model.spec.stages[-1].channels)]


def build_models(task: str, name: str) -> tuple[nn.Module, nn.Module]:
    """Ours and the reference, in eval mode: for classifiers timm's built-in HRNet with our weights, for tasks the
    unfused task model itself (random weights; pose: 17 COCO joints, seg: 19 Cityscapes classes)."""
    if task == 'classify':
        ours = timm.create_model(name).eval()
        builtin = getattr(timm_builtin_hrnet, name)().eval()
        builtin.load_state_dict(ours.state_dict())
        return ours, builtin
    spec = resolve_variant(name)
    if task == 'pose':
        model: nn.Module = HRNetPose(replace(spec, multi_scale_output=False), num_joints=17)
    elif task == 'ocr':  # the official HRNetV2-W48 + OCR (OCR widths 512 / 256)
        model = HRNetOCR(replace(spec, upsample='bilinear'), num_classes=19)
    else:
        model = HRNetSeg(replace(spec, upsample='bilinear'), num_classes=19)
    model = randomize_batchnorm(model).eval()
    return model, model


def build_variants(
        task: str, name: str, variants: list[str], device: torch.device, dtype: torch.dtype, example: Tensor,
        branch_widths: list[int] | None, work: Path,
) -> tuple[dict[str, tuple[Callable[[Tensor], Tensor], str]], nn.Module]:
    """Each variant as (callable, its input: 'nchw', 'channels_last' or 'float32' for the runtimes), all with the
    same weights, and the reference model in float32 (`build_models`). `example` is a channels_last input, for the
    CUDA graph capture."""
    ours, reference = build_models(task, name)  # the built-in classifier (timm_*) or the unfused task model
    widths = branch_widths or tensor_core_widths(ours)

    def prepared(model: nn.Module, channels_last: bool) -> nn.Module:
        model = model.to(device=device, dtype=dtype)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    def fused(channels_last: bool, padded: bool = False) -> nn.Module:
        return optimize_for_inference(
            ours, channels_last=channels_last, dtype=dtype, branch_widths=widths if padded else None).to(device)

    def compiled(model: nn.Module, mode: str | None = None) -> Callable[[Tensor], Tensor]:
        return torch.compile(model, dynamic=False, mode=mode)

    def onednn_graph(model: nn.Module) -> Callable[[Tensor], Tensor] | None:
        """TorchScript's oneDNN Graph (LLGA) fuser on a traced, frozen model: torch's fusion outside inductor.
        None, with the fuser's error printed, where it fails on this model and dtype."""
        torch.jit.enable_onednn_fusion(True)
        channels_last = example.to(memory_format=torch.channels_last)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter('ignore')
                scripted = torch.jit.freeze(torch.jit.trace(model.eval(), channels_last))
                for _ in range(2):  # the fuser compiles on the first calls
                    scripted(channels_last)
        except RuntimeError as error:
            print(f'ours_fused_onednn_graph ({dtype}): the oneDNN Graph fuser failed: {error}')
            return None
        return scripted

    builders: dict[str, Callable[[], tuple[Callable[[Tensor], Tensor] | None, bool]]] = {
        'timm_eager': lambda: (prepared(copy.deepcopy(reference), False), False),
        'timm_channels_last': lambda: (prepared(copy.deepcopy(reference), True), True),
        'timm_compile': lambda: (compiled(prepared(copy.deepcopy(reference), True)), True),
        'timm_compile_cudagraphs': lambda: (
            compiled(prepared(copy.deepcopy(reference), True), 'reduce-overhead'), True),
        'ours_eager': lambda: (prepared(copy.deepcopy(ours), False), False),
        'ours_fused': lambda: (fused(False), False),
        'ours_fused_channels_last': lambda: (fused(True), True),
        'ours_fused_compile': lambda: (compiled(fused(True)), True),
        'ours_fused_compile_max_autotune': lambda: (compiled(fused(True), 'max-autotune'), True),
        'ours_fused_onednn_graph': lambda: (onednn_graph(fused(True)), True),
        'ours_fused_cudagraph': lambda: (cuda_graphed(fused(True), example), True),
        'ours_fused_compile_cudagraphs': lambda: (compiled(fused(True), 'reduce-overhead'), True),
        'ours_padded_channels_last': lambda: (fused(True, padded=True), True),
        'ours_padded_compile': lambda: (compiled(fused(True, padded=True)), True),
        'ours_padded_cudagraph': lambda: (cuda_graphed(fused(True, padded=True), example), True),
    }
    built: dict[str, tuple[Callable[[Tensor], Tensor], str]] = {}
    dtype_name = next(key for key, value in DTYPES.items() if value == dtype)
    for variant in variants:
        if variant in RUNTIME_VARIANTS:
            run = runtime_variant(variant, reference, ours, dtype_name, work, example.shape[0],
                                  (example.shape[-2], example.shape[-1]))
            if run is not None:
                built[variant] = (run, 'float32')
        else:
            model, channels_last = builders[variant]()
            if model is not None:
                built[variant] = (model, 'channels_last' if channels_last else 'nchw')
    return built, reference.to(device)


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


def ratio(median: dict[str, float], reference: str | None, variant: str) -> float | None:
    return median[reference] / median[variant] if reference in median else None


@torch.inference_mode()
def bench_case(name: str, batch_size: int, dtype_name: str, args: argparse.Namespace) -> list[Result]:
    """All variants of one model at one batch size and dtype, interleaved."""
    device, dtype = torch.device(args.device), DTYPES[dtype_name]
    x = torch.randn(batch_size, 3, *args.img_size, device=device)
    inputs = {'nchw': x.to(dtype), 'channels_last': x.to(dtype).contiguous(memory_format=torch.channels_last),
              'float32': x.float().contiguous()}
    with tempfile.TemporaryDirectory() as work:
        variants, reference_model = build_variants(args.task, name, args.variants, device, dtype,
                                                   inputs['channels_last'], args.branch_widths, Path(work))
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN would round float32 convs to TF32
        reference = reference_model(x)  # the built-in (classifiers) or unfused task model, eager float32
    flops_per_image = count_flops_per_image(reference_model, x)
    del reference_model
    matmul, matmul_flops = matmul_call(device, dtype)

    calls: dict[str, Callable[[], object]] = {'matmul': matmul}
    warmup_seconds: dict[str, float] = {}
    diffs: dict[str, float] = {}
    for variant, (model, kind) in variants.items():
        calls[variant] = lambda model=model, kind=kind: model(inputs[kind])
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
    baseline = min((v for v in BASELINES if v in median), key=median.__getitem__, default=None)
    label = name if args.task == 'classify' else f'{args.task}_{name}'  # pose_hrnet_w32, seg_hrnet_w48

    results = []
    for variant in variants:
        images_per_second = batch_size / median[variant]
        flops_per_second = flops_per_image * images_per_second
        results.append(Result(
            model=label, variant=variant, batch_size=batch_size, dtype=dtype_name, device=str(device),
            ms_per_batch=1000 * median[variant],
            images_per_second=images_per_second,
            baseline=baseline,
            speedup_vs_baseline=ratio(median, baseline, variant),
            speedup_vs_timm_eager=ratio(median, 'timm_eager', variant),
            speedup_vs_timm_channels_last=ratio(median, 'timm_channels_last', variant),
            speedup_vs_openvino=ratio(median, DEPLOY_BASELINE[args.task], variant),
            gflops_per_second=flops_per_second / 1e9,
            fraction_of_matmul_peak=flops_per_second / matmul_flops_per_second,
            max_rel_diff_vs_fp32=diffs[variant],
            warmup_seconds=warmup_seconds[variant],
        ))
    print(f'\n{label}, batch {batch_size}, {dtype_name} on {device}: {flops_per_image / 1e9:.2f} GFLOP/image, '
          f'matmul peak {matmul_flops_per_second / 1e9:.0f} GFLOP/s, {args.rounds} rounds x {args.iters} calls; '
          f'x base: vs {baseline or "nothing (no compiled built-in variant in this run)"}')
    print(f'{"variant":<30}{"ms/batch":>10}{"img/s":>10}{"x base":>8}{"x eager":>9}{"x cl":>7}{"x OV":>7}'
          f'{"GFLOP/s":>9}{"peak":>7}{"diff fp32":>11}{"warmup s":>10}')

    def fmt(value: float | None) -> str:
        return '' if value is None else f'{value:.2f}'

    for r in results:
        print(f'{r.variant:<30}{r.ms_per_batch:>10.2f}{r.images_per_second:>10.1f}{fmt(r.speedup_vs_baseline):>8}'
              f'{fmt(r.speedup_vs_timm_eager):>9}{fmt(r.speedup_vs_timm_channels_last):>7}{fmt(r.speedup_vs_openvino):>7}'
              f'{r.gflops_per_second:>9.1f}{r.fraction_of_matmul_peak:>7.0%}{r.max_rel_diff_vs_fp32:>11.1e}'
              f'{r.warmup_seconds:>10.1f}')
    return results


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_freezing:
        torch._inductor.config.freezing = True
    device = torch.device(args.device)
    print(f'torch {torch.__version__}, timm {timm.__version__}, {machine_line(device)}, '
          f'input {args.img_size[0]}x{args.img_size[1]}')
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
