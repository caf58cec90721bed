"""OpenVINO's precision hints timed plainly: our float32 IR under the f32 and the bf16 hint and our int8 IR, each
compiled with and without `PERF_COUNT`, interleaved rounds, median wall time; checks that the per-layer counters of
`profile_int8.py` do not change which precision is fastest.

    python benchmarks/bench_precision_hints.py --batch-size 8 --rounds 7     # hrnet_w18 224x224
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import timm
import torch
from bench_common import machine_line, randomize_batchnorm

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints in timm)
from timm_hrnet.export import compile_openvino, export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='hrnet_w18')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    print(f'{args.model} {args.img_size}x{args.img_size}, batch {args.batch_size}; {machine_line(torch.device("cpu"))}')
    model = randomize_batchnorm(timm.create_model(args.model)).eval()
    shape = (args.batch_size, 3, args.img_size, args.img_size)
    requests = {}
    with tempfile.TemporaryDirectory() as work:
        common = dict(input_size=shape[2:], dynamic=False, batch_size=args.batch_size, check=False)
        float_ir = export(model, f'{work}/float.xml', 'openvino', **common).path
        int8_ir = export(model, f'{work}/int8.xml', 'openvino', dtype='int8', **common,
                         calibration=[torch.randn(shape) for _ in range(max(1, 8 // args.batch_size))]).path
        for name, path, hint in (('f32', float_ir, 'f32'), ('bf16', float_ir, 'bf16'), ('int8', int8_ir, 'f32')):
            for perf_count in (False, True):
                compiled = compile_openvino(path, {
                    'INFERENCE_PRECISION_HINT': hint, 'PERF_COUNT': perf_count, 'INFERENCE_NUM_THREADS': args.threads})
                requests[f'{name}{" PERF_COUNT" if perf_count else ""}'] = compiled.create_infer_request()
    x = torch.randn(shape).numpy()
    for request in requests.values():
        request.infer({0: x})
    seconds: dict[str, list[float]] = {name: [] for name in requests}
    order = list(requests)
    for round_index in range(args.rounds):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            start = time.perf_counter()
            requests[name].infer({0: x})
            seconds[name].append(time.perf_counter() - start)
    median = {name: 1000 * statistics.median(values) for name, values in seconds.items()}
    for name, ms in median.items():
        print(f'{name:<18}{ms:>9.1f} ms  x f32 {median["f32"] / ms:.2f}')


if __name__ == '__main__':
    main()
