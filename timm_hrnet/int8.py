"""What OpenVINO's CPU plugin actually runs, read from a compiled model: the precision of every kernel it picked.

A precision hint or an int8 IR says what was asked; the plugin decides per layer (a CPU without bf16 runs a bf16
hint in f32, a convolution without a FakeQuantize in front of it stays in float in an int8 IR). The runtime model
of a compiled model names each layer's kernel (`primitiveType`, e.g. `brgconv_avx512_1x1_I8`), whose suffix is the
precision it executes in; that is what `executed_precisions` counts.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ['executed_precisions', 'describe_precisions']

# layers that are data, not work
_NOT_WORK = {'Const', 'Parameter', 'Result', 'Input', 'Output'}
# the layers whose precision decides the speed of a convolutional network
_COMPUTE = ('Convolution', 'GroupConvolution', 'Deconvolution', 'FullyConnected', 'MatMul')
_PRECISIONS = {'i8': 'int8', 'u8': 'int8', 'bf16': 'bf16', 'f16': 'f16', 'f32': 'f32'}


def _precision(rt_info: Any) -> str:
    """The executed precision of one runtime-model layer: its kernel name's suffix, else its runtime precision."""
    kernel = rt_info['primitiveType'].astype(str) if 'primitiveType' in rt_info else ''
    suffix = kernel.rsplit('_', 1)[-1].lower()
    if suffix in _PRECISIONS:
        return _PRECISIONS[suffix]
    runtime = rt_info['runtimePrecision'].astype(str).lower() if 'runtimePrecision' in rt_info else ''
    return _PRECISIONS.get(runtime, runtime or 'unknown')


def executed_precisions(compiled_model: Any) -> dict[str, Counter]:
    """Per layer type of an OpenVINO `CompiledModel`, how many layers run in each precision ('int8', 'bf16', ...)."""
    counts: dict[str, Counter] = {}
    for op in compiled_model.get_runtime_model().get_ops():
        rt_info = op.get_rt_info()
        layer_type = rt_info['layerType'].astype(str) if 'layerType' in rt_info else op.get_type_name()
        if layer_type in _NOT_WORK:
            continue
        counts.setdefault(layer_type, Counter())[_precision(rt_info)] += 1
    return counts


def describe_precisions(compiled_model: Any) -> str:
    """One line: the precisions of the compute layers (convolutions, matmuls) and of everything else."""
    counts = executed_precisions(compiled_model)
    compute: Counter = Counter()
    other: Counter = Counter()
    for layer_type, by_precision in counts.items():
        (compute if layer_type.startswith(_COMPUTE) else other).update(by_precision)

    def listed(counter: Counter) -> str:
        return ', '.join(f'{precision} {count}' for precision, count in counter.most_common()) or 'none'
    return f'convolutions/matmuls: {listed(compute)}; other layers: {listed(other)}'
