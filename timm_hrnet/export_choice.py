"""`dtype='auto'`: export every precision this CPU can run, time them here, keep the fastest that stays within the
accuracy rule, and say which and why.

Which precision is fastest depends on the CPU more than on the model (docs/export.md): int8 runs 2-4x float on
AVX2 and AVX-512 VNNI CPUs, OpenVINO's bf16 hint is slower than f32 on an AVX-512 BF16 CPU without AMX and faster
with AMX. So the choice is measured, not looked up: the candidates run on the same inputs in interleaved rounds
(a busy phase of the machine slows all alike) and the median time per call decides. The accuracy rule: a
candidate's argmax decisions (top-1 per image, heatmap peak per joint, label per pixel) on the calibration images
agree with the float32 export's in at least `min_agreement` of the cases, 99.5 % by default: then at most 0.5 % of
the predictions change, which bounds the top-1 drop at 0.5 points on data like the calibration set.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from .export import (
    ExportError,
    ExportReport,
    calibration_batches,
    calibration_inputs,
    export,
    export_input_size,
    require_runtime,
    run_exported,
)
from .outputs import check_writable, temporary_folder

__all__ = ['Candidate', 'AutoChoice', 'MIN_AGREEMENT', 'candidate_dtypes', 'export_auto', 'time_candidates']

MIN_AGREEMENT = 0.995


@dataclass(frozen=True)
class Candidate:
    dtype: str
    seconds_per_call: float
    agreement: float  # argmax agreement with the float32 export on the calibration images
    accepted: bool


@dataclass(frozen=True)
class AutoChoice:
    report: ExportReport  # the chosen export, at the target
    candidates: list[Candidate]
    reason: str


def candidate_dtypes(fmt: str) -> list[str]:
    """float32, bfloat16 where OpenVINO runs it natively on this CPU, and int8."""
    if fmt == 'onnx':
        return ['float32', 'int8']
    ov = require_runtime('openvino')
    native_bf16 = 'BF16' in ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    return ['float32', *(['bfloat16'] if native_bf16 else []), 'int8']


def time_candidates(calls: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, float]:
    """Median seconds per call of each candidate, after one untimed call, in rounds whose order rotates."""
    for call in calls.values():
        call()
    order = list(calls)
    seconds: dict[str, list[float]] = {name: [] for name in order}
    for round_index in range(rounds):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _decisions(outputs: list[Tensor], pose: bool) -> Tensor:
    first = outputs[0]
    return first.flatten(2).argmax(2) if pose else first.argmax(1)


def export_auto(
        model: nn.Module,
        path: str | os.PathLike,
        format: str = 'openvino',
        *,
        calibration: str | os.PathLike | Sequence[Tensor] | None,
        input_size: Sequence[int] | None = None,
        dynamic: bool = True,
        batch_size: int = 1,
        check: bool = True,
        min_agreement: float = MIN_AGREEMENT,
        timer: Callable[[dict[str, Callable[[], object]]], dict[str, float]] = time_candidates,
        progress: bool = False,
) -> AutoChoice:
    """Export `model` in each of `candidate_dtypes(format)`, keep the fastest whose argmax agreement with float32 on
    the calibration images is at least `min_agreement` (float32 always qualifies) and move it to `path`.

    `timer` maps {dtype: call} to seconds per call (default: `time_candidates`, measured here); a call runs one
    batch of calibration images (the static batch, else 1 image).
    """
    if calibration is None:
        raise ExportError('dtype auto needs calibration images: give a folder of images like the ones the model '
                          'will see (--calibration); the int8 candidate is calibrated and judged on them')
    target = Path(path)
    check_writable(target)
    if isinstance(calibration, (str, os.PathLike)):
        inputs = calibration_inputs(model, calibration, export_input_size(model, input_size), progress=progress)
    else:
        inputs = [t.float() for t in calibration]
    # a set smaller than the static batch: one line
    batches = calibration_batches(inputs, batch_size if not dynamic else 1)
    pose = getattr(model, 'num_joints', None) is not None
    suffix = '.onnx' if format == 'onnx' else '.xml'
    with temporary_folder(target) as work:
        reports: dict[str, ExportReport] = {}
        runs = {}
        for dtype in candidate_dtypes(format):
            reports[dtype] = export(model, work / f'{dtype}{suffix}', format, dtype=dtype, input_size=input_size,
                                    dynamic=dynamic, batch_size=batch_size, check=check, progress=progress,
                                    calibration=batches if dtype == 'int8' else None)
            runs[dtype] = run_exported(reports[dtype].path, format, dtype)
        with torch.no_grad():
            decisions = {dtype: torch.cat([_decisions(run(b), pose).flatten() for b in batches])
                         for dtype, run in runs.items()}
        seconds = timer({dtype: (lambda run=run: run(batches[0])) for dtype, run in runs.items()})
        candidates = []
        for dtype in runs:
            agreement = (decisions[dtype] == decisions['float32']).float().mean().item()
            candidates.append(Candidate(dtype, seconds[dtype], agreement,
                                        dtype == 'float32' or agreement >= min_agreement))
        chosen = min((c for c in candidates if c.accepted), key=lambda c: c.seconds_per_call)
        float32 = next(c for c in candidates if c.dtype == 'float32')
        rejected = [c for c in candidates if not c.accepted and c.seconds_per_call < chosen.seconds_per_call]
        reason = (f'{chosen.dtype}: {float32.seconds_per_call / chosen.seconds_per_call:.2f}x float32\'s speed on '
                  f'this machine, argmax agreement with float32 {100 * chosen.agreement:.2f} %')
        reason += ''.join(f'; {c.dtype} was faster ({float32.seconds_per_call / c.seconds_per_call:.2f}x) but agreed '
                          f'on {100 * c.agreement:.2f} % < {100 * min_agreement:.2f} %' for c in rejected)
        written = reports[chosen.dtype].path
        if format == 'onnx':
            final = target.with_suffix('.onnx')
            os.replace(written, final)
        else:  # the weights first, so a reader never finds an .xml without its .bin
            final = target.with_suffix('.xml')
            os.replace(written.with_suffix('.bin'), final.with_suffix('.bin'))
            os.replace(written, final)
    return AutoChoice(replace(reports[chosen.dtype], path=final), candidates, reason)
