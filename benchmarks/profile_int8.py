"""Where int8 time goes in OpenVINO: per-layer performance counters (`PERF_COUNT`) of the float and int8 IRs of a
model, summed by op type, by executed precision (the suffix of the kernel OpenVINO picked: `brgconv_avx512_I8`,
`jit_avx512_bf16`, ...) and by part of the network (stem, each stage's branches, each stage's exchange unit, head).

Profiled, on the same weights (random, with random BatchNorm statistics) and inputs:
  baseline      OpenVINO on the plain ONNX export of the unfused model (timm's built-in for classifiers), bf16 hint
  baseline_f32  the same IR, f32 hint
  ours_f32      `timm_hrnet.export(..., 'openvino')` compiled with the f32 hint
  ours_bf16     the same IR, bf16 hint (on a CPU without bf16 the plugin runs f32)
  int8_f32      `export(..., dtype='int8')` (NNCF, random calibration inputs), f32 hint for what stays in float
  int8_bf16     the same int8 IR, bf16 hint for what stays in float

A layer's time is its median `real_time` over the profiled calls (robust to a shared machine's bursts); `wall` is
the median wall-clock time of a call, variants interleaved round by round; `agree` compares each variant's output
with ours_f32's on the profiled input (argmax label per image or pixel, heatmap peak per joint). The per-layer
precision is what ran, not what was asked: the convolutions of an int8 IR that ran in a float kernel are listed.

    python benchmarks/profile_int8.py --task classify               # hrnet_w18 224x224, batch 1
    python benchmarks/profile_int8.py --task pose --batch-size 8    # pose W32 256x192
    python benchmarks/profile_int8.py --task seg --img-size 256 512 # seg W48 (default 512x1024)
    python benchmarks/profile_int8.py --from-json profile.json      # the tables of a saved profile again
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from bench_common import machine_line
from bench_inference import TASK_IMG_SIZE, TASK_MODELS, build_models

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints in timm)
from timm_hrnet.export import compile_openvino, export


def layer_part(name: str) -> str:
    """The part of an HRNet a layer of the exported graph belongs to, from the ONNX node name torch gives it."""
    stage = re.search(r'stage(\d)', name)
    if stage:
        branch = re.search(r'branches\.(\d)', name)
        return f'stage{stage.group(1)} branch{branch.group(1)}' if branch else f'stage{stage.group(1)} exchange'
    transition = re.search(r'transition(\d)', name)
    if transition:
        return f'transition{transition.group(1)}'
    if re.search(r'^/?(conv1|conv2|layer1|stem|bn1|bn2|act1|act2)\b|/(conv1|conv2|layer1)/', name) or 'image' in name:
        return 'stem'
    return 'head'


def precision_of(exec_type: str) -> str:
    """'brgconv_avx512_1x1_I8' -> 'int8'; 'jit_avx512_bf16' -> 'bf16'; 'other' for kernels without a suffix."""
    suffix = exec_type.rsplit('_', 1)[-1].lower()
    names = {'i8': 'int8', 'u8': 'int8', 'f32': 'f32', 'bf16': 'bf16', 'f16': 'f16', 'i32': 'i32', 'i64': 'i64'}
    return names.get(suffix, 'other')


def ir_variants(task: str, name: str, img_size: tuple[int, int], batch_size: int, calibration_count: int,
                work: Path) -> dict[str, tuple[Path, str]]:
    """Each variant as (IR path, OpenVINO precision hint)."""
    import openvino
    ours, reference = build_models(task, name)
    onnx_path = work / 'plain.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(copy.deepcopy(reference).float(), (torch.randn(1, 3, *img_size),), str(onnx_path),
                          dynamo=False, input_names=['image'], dynamic_axes={'image': {0: 'batch'}})
    openvino.save_model(openvino.convert_model(str(onnx_path)), str(work / 'plain.xml'))
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randn(batch_size, 3, *img_size, generator=generator)
                   for _ in range(max(1, calibration_count // batch_size))]
    common = dict(input_size=img_size, dynamic=False, batch_size=batch_size, check=False)
    export(ours, work / 'ours.xml', 'openvino', **common)
    export(ours, work / 'int8.xml', 'openvino', dtype='int8', calibration=calibration, **common)
    irs = {'baseline': (work / 'plain.xml', 'bf16'), 'baseline_f32': (work / 'plain.xml', 'f32'),
           'ours_f32': (work / 'ours.xml', 'f32'),
           'ours_bf16': (work / 'ours.xml', 'bf16'), 'int8_f32': (work / 'int8.xml', 'f32'),
           'int8_bf16': (work / 'int8.xml', 'bf16')}
    return irs


def profile(irs: dict[str, tuple[Path, str]], batch_size: int, img_size: tuple[int, int], rounds: int,
            threads: int) -> tuple[dict[str, list[dict]], dict[str, float], dict[str, str], dict[str, torch.Tensor]]:
    """Per variant: the layers (name, type, kernel, precision, part, median µs), the median wall ms per call, the
    precision hint the plugin runs and the first output."""
    import openvino
    core = openvino.Core()
    x = torch.randn(batch_size, 3, *img_size).numpy()
    requests, hints = {}, {}
    for variant, (path, hint) in irs.items():
        model = core.read_model(str(path))
        if model.inputs[0].get_partial_shape().is_dynamic:
            model.reshape([batch_size, 3, *img_size])
        compiled = compile_openvino(model, {'PERF_COUNT': True, 'INFERENCE_PRECISION_HINT': hint,
                                            'INFERENCE_NUM_THREADS': threads})
        hints[variant] = compiled.get_property('INFERENCE_PRECISION_HINT').to_string()
        requests[variant] = compiled.create_infer_request()
        for _ in range(2):
            requests[variant].infer({0: x})
    times: dict[str, dict[str, list[float]]] = {v: defaultdict(list) for v in irs}
    layers: dict[str, dict[str, dict]] = {v: {} for v in irs}
    wall: dict[str, list[float]] = {v: [] for v in irs}
    order = list(irs)
    for round_index in range(rounds):
        shift = round_index % len(order)
        for variant in order[shift:] + order[:shift]:
            start = time.perf_counter()
            requests[variant].infer({0: x})
            wall[variant].append(time.perf_counter() - start)
            for info in requests[variant].profiling_info:
                if info.status.name == 'NOT_RUN':
                    continue
                times[variant][info.node_name].append(info.real_time.total_seconds() * 1e6)
                layers[variant][info.node_name] = {
                    'name': info.node_name, 'type': info.node_type, 'kernel': info.exec_type,
                    'precision': precision_of(info.exec_type), 'part': layer_part(info.node_name)}
    outputs = {v: torch.from_numpy(request.get_output_tensor(0).data.copy()) for v, request in requests.items()}
    result = {}
    for variant in irs:
        result[variant] = [{**layer, 'us': statistics.median(times[variant][layer_name])}
                           for layer_name, layer in layers[variant].items()]
    return result, {v: 1000 * statistics.median(w) for v, w in wall.items()}, hints, outputs


def agreement(task: str, output: torch.Tensor, reference: torch.Tensor) -> float:
    """Pose: heatmap peaks at the same pixel (per joint); classify / seg: the same argmax label (per image / pixel)."""
    if task == 'pose':
        return (output.flatten(2).argmax(2) == reference.flatten(2).argmax(2)).float().mean().item()
    return (output.argmax(1) == reference.argmax(1)).float().mean().item()


def exchange_op(layer: dict) -> str:
    """Exchange-unit layers by op type ('-' for the rest of the network), to price the resizes and adds."""
    return f'exchange {layer["type"]}' if layer['part'].endswith('exchange') else '-'


def summed(layers: list[dict], key: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for layer in layers:
        totals[exchange_op(layer) if key == 'exchange' else layer[key]] += layer['us']
    totals.pop('-', None)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def print_table(title: str, key: str, profiles: dict[str, list[dict]], limit: int = 14) -> None:
    """Milliseconds per call by `key` for every variant (rows: the keys that cost most in any variant)."""
    sums = {v: summed(layers, key) for v, layers in profiles.items()}
    keys = sorted({k for s in sums.values() for k in s}, key=lambda k: -max(s.get(k, 0.0) for s in sums.values()))
    print(f'\n{title} (ms per call, sum of per-layer medians)')
    print(f'{"":<26}' + ''.join(f'{v:>14}' for v in profiles))
    for k in keys[:limit]:
        print(f'{k:<26}' + ''.join(f'{sums[v].get(k, 0.0) / 1000:>14.2f}' for v in profiles))
    if key != 'exchange':
        print(f'{"total":<26}' + ''.join(f'{sum(sums[v].values()) / 1000:>14.2f}' for v in profiles))


def float_layers_in_int8(layers: list[dict]) -> list[dict]:
    """Convolutions (and matmuls) of an int8 IR that ran in a float kernel."""
    return [layer for layer in layers if layer['type'] in ('Convolution', 'FullyConnected', 'MatMul',
                                                           'GroupConvolution', 'Deconvolution')
            and layer['precision'] != 'int8']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=('classify', 'pose', 'seg'), default='classify')
    parser.add_argument('--model', help='default: hrnet_w18 (classify), hrnet_w32 (pose), hrnet_w48 (seg)')
    parser.add_argument('--img-size', nargs=2, type=int, help='H W; default 224 224, 256 192, 512 1024')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=9, help='profiled calls per variant (interleaved)')
    parser.add_argument('--calibration', type=int, default=8, help='random calibration images for NNCF')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--json', help='write the per-layer profiles and wall times here')
    parser.add_argument('--from-json', help='print the tables of a profile written with --json, run nothing')
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(saved.get('header', args.from_json))
        report(saved['profiles'], saved['wall_ms'], saved['hints'], saved.get('agreement', {}))
        return
    name = args.model or TASK_MODELS[args.task][0]
    img_size = tuple(args.img_size) if args.img_size else TASK_IMG_SIZE[args.task]
    import nncf
    import openvino
    cpu = machine_line(torch.device('cpu'))
    header = (f'{args.task} {name} {img_size[0]}x{img_size[1]}, batch {args.batch_size}; {cpu}'
              f' (OpenVINO threads {args.threads}); OpenVINO {openvino.__version__}, NNCF {nncf.__version__}')
    print(header)
    with tempfile.TemporaryDirectory() as work:
        irs = ir_variants(args.task, name, img_size, args.batch_size, args.calibration, Path(work))
        profiles, wall, hints, outputs = profile(irs, args.batch_size, img_size, args.rounds, args.threads)
    agreements = {v: agreement(args.task, outputs[v], outputs['ours_f32']) for v in profiles}
    report(profiles, wall, hints, agreements)
    if args.json:
        Path(args.json).write_text(json.dumps({'args': vars(args), 'header': header, 'wall_ms': wall, 'hints': hints,
                                               'agreement': agreements, 'profiles': profiles}, indent=1))


def report(profiles: dict[str, list[dict]], wall: dict[str, float], hints: dict[str, str],
           agreements: dict[str, float]) -> None:
    """The tables: wall time and ratios, then milliseconds by op type, precision, network part, exchange op."""
    for layers in profiles.values():
        for layer in layers:  # from the kernel and name, so that profiles saved by older versions read alike
            layer['precision'], layer['part'] = precision_of(layer['kernel']), layer_part(layer['name'])
    base = wall['baseline']
    print(f'\n{"variant":<14}{"hint run":>9}{"wall ms":>10}{"x base":>8}{"layers ms":>11}{"agree % f32":>13}')
    for variant in profiles:
        agree = f'{100 * agreements[variant]:.2f}' if variant in agreements else '-'
        print(f'{variant:<14}{hints[variant]:>9}{wall[variant]:>10.2f}{base / wall[variant]:>8.2f}'
              f'{sum(layer["us"] for layer in profiles[variant]) / 1000:>11.2f}{agree:>13}')
    print_table('by op type', 'type', profiles)
    print_table('by executed precision', 'precision', profiles)
    print_table('by part of the network', 'part', profiles, limit=20)
    print_table('exchange units by op type', 'exchange', profiles)
    for variant in (v for v in profiles if v.startswith('int8')):
        stay = float_layers_in_int8(profiles[variant])
        print(f'\n{variant}: {len(stay)} convolution / matmul layers ran in float, '
              f'{sum(layer["us"] for layer in stay) / 1000:.2f} ms:')
        for layer in sorted(stay, key=lambda layer: -layer['us'])[:8]:
            print(f'  {layer["us"] / 1000:7.3f} ms  {layer["kernel"]:<26} {layer["name"][:80]}')


if __name__ == '__main__':
    main()
