"""Exports a deployer can trust: a fused model written to ONNX or OpenVINO IR (dynamic batch and size by default),
optionally int8 from a calibration folder, then run in its runtime against the PyTorch model at the export size and
at other sizes, with the largest relative difference reported. Nothing is left at the target unless it was written
whole and, for float exports, within tolerance.

The runtimes (onnx + onnxruntime, openvino, nncf) are optional: a missing one is a one-line error naming the
install command, and importing this module needs none of them.
"""
from __future__ import annotations

import copy
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .fused import is_inference_optimized, optimize_for_inference
from .images import UnreadableImageError, image_to_tensor, list_images, open_image
from .outputs import check_writable, temporary_folder
from .signal_stack import keep_signal_stack

__all__ = ['FORMATS', 'DTYPES', 'ExportError', 'ExportCheck', 'ExportReport', 'compile_openvino', 'export',
           'run_exported']

FORMATS = ('onnx', 'openvino')
DTYPES = ('float32', 'float16', 'bfloat16', 'int8')
# sizes the check runs at besides the export size: non-multiples of 32, where branch sizes do not halve exactly
CHECK_SIZES = ((250, 330), (97, 161))
# largest relative difference (max |exported - torch| / max |torch|) a float export may show in the check
TOLERANCE = {'float32': 1e-4, 'float16': 2e-2, 'bfloat16': 5e-2}
# the CPU plugin's inference precision for an IR of each dtype: it must be asked for when compiling, since the
# plugin otherwise runs float32 IRs in bf16 on CPUs with bf16 instructions (float16: weights stored in fp16)
_OPENVINO_PRECISION = {'float32': 'f32', 'float16': 'f32', 'bfloat16': 'bf16', 'int8': 'f32'}
_INSTALL = {
    'onnx': ('onnx', 'pip install "timm-hrnet[onnx]"'),
    'onnxruntime': ('onnxruntime', 'pip install "timm-hrnet[onnx]"'),
    'openvino': ('openvino', 'pip install "timm-hrnet[openvino]"'),
    'nncf': ('nncf', 'pip install "timm-hrnet[openvino]" nncf'),
}


class ExportError(ValueError):
    """An export that cannot be made or did not pass its check (one line, fit for the command line)."""


@dataclass(frozen=True)
class ExportCheck:
    """The exported file run in its runtime against the PyTorch model on one input size."""

    size: tuple[int, int]
    max_rel_diff: float
    agreement: float | None = None  # classifiers: top-1 agreement; pose: heatmap argmax agreement; seg: pixel labels


@dataclass(frozen=True)
class ExportReport:
    path: Path
    format: str
    dtype: str
    input_size: tuple[int, int]
    dynamic: bool
    outputs: tuple[str, ...]
    checks: list[ExportCheck] = field(default_factory=list)
    batch_size: int | None = None  # the fixed batch of a static export; None: any batch

    @property
    def max_rel_diff(self) -> float:
        return max((c.max_rel_diff for c in self.checks), default=float('nan'))


def require_runtime(name: str) -> Any:
    """The runtime module `name`, or an ExportError saying which extra installs it."""
    module, install = _INSTALL[name]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ExportError(f'{name} is not installed: {install}') from error


def export_input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, int]:
    """(height, width) an export traces at: the given size, else the model's task or pretrained size, else 512x1024."""
    if input_size is not None:
        return int(input_size[-2]), int(input_size[-1])
    task_size = getattr(model, 'input_size', None)  # pose models: (height, width)
    if task_size is not None:
        return int(task_size[0]), int(task_size[1])
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if 'input_size' in cfg:
        return int(cfg['input_size'][1]), int(cfg['input_size'][2])
    return 512, 1024  # segmentation models: the Cityscapes crop


def _in_chans(model: nn.Module) -> int:
    return int(getattr(model, 'in_chans', None) or (getattr(model, 'pretrained_cfg', None) or {}).get(
        'input_size', (3,))[0])


def _normalization(model: nn.Module) -> tuple[Tensor, Tensor]:
    """The mean and std the model's inputs are normalised with (task models carry theirs, classifiers the cfg's)."""
    mean = getattr(model, 'mean', None)
    std = getattr(model, 'std', None)
    if mean is None or std is None:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        mean, std = cfg.get('mean', (0.485, 0.456, 0.406)), cfg.get('std', (0.229, 0.224, 0.225))
    return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)


def calibration_inputs(model: nn.Module, folder: str | os.PathLike, size: tuple[int, int],
                       limit: int = 300, progress: bool = False) -> list[Tensor]:
    """Normalised `size` inputs from the images of `folder` (int8 calibration); an unreadable image is an error."""
    try:
        files = list_images(folder)[:limit]
    except (OSError, ValueError) as error:
        raise ExportError(f'calibration folder unusable: {error}') from error
    mean, std = _normalization(model)
    inputs = []
    for path in tqdm(files, desc='calibration images', unit='image', disable=not progress, file=sys.stderr):
        try:
            pixels = image_to_tensor(open_image(path), _in_chans(model))
        except UnreadableImageError as error:
            raise ExportError(f'calibration image unreadable: {error}') from error
        pixels = F.interpolate(pixels[None], size=size, mode='bilinear', align_corners=False, antialias=True)[0]
        inputs.append(((pixels - mean) / std)[None].float())
    return inputs


def calibration_batches(inputs: list[Tensor], batch_size: int) -> list[Tensor]:
    """Calibration inputs regrouped into batches of a static export's batch size (a remainder is dropped)."""
    samples = [sample for x in inputs for sample in x.split(1)]
    if len(samples) < batch_size:
        raise ExportError(f'{len(samples)} calibration images for a static batch of {batch_size}: give at least '
                          f'{batch_size}')
    usable = len(samples) - len(samples) % batch_size
    return [torch.cat(samples[i:i + batch_size]) for i in range(0, usable, batch_size)]


def _output_names(outputs: Any, decoded: bool = False) -> tuple[str, ...]:
    if decoded:
        return ('keypoints', 'scores')
    if isinstance(outputs, Tensor):
        return ('output',)
    return tuple(f'feature_{i}' for i in range(len(outputs)))


def _as_list(outputs: Any) -> list[Tensor]:
    return [outputs] if isinstance(outputs, Tensor) else list(outputs)


class _DecodedPose(nn.Module):
    """A pose model whose outputs are its keypoints in crop pixels and their scores (`forward_keypoints`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(False)  # as its model: fused models cannot be put in training mode

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_keypoints(x)


def _export_onnx(model: nn.Module, example: Tensor, path: Path, names: tuple[str, ...], dynamic: bool,
                 opset: int, fixed_size: bool = False) -> None:
    axes = {0: 'batch'} if fixed_size else {0: 'batch', 2: 'height', 3: 'width'}
    dynamic_axes = {'image': axes, **{name: {0: 'batch'} for name in names}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # exporter chatter (deprecations, tracer warnings about shapes)
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=['image'], output_names=list(names),
                          dynamic_axes=dynamic_axes, opset_version=opset)


def _quantize_onnx(source: Path, target: Path, calibration: list[Tensor], progress: bool) -> None:
    """Static QDQ int8 with onnxruntime (per-channel weights, as its x86 kernels prefer)."""
    require_runtime('onnxruntime')
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(tqdm(calibration, desc='int8 calibration', unit='batch', disable=not progress,
                                   file=sys.stderr))

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {'image': item.numpy()}

    prepared = source.with_suffix('.pre.onnx')
    quant_pre_process(str(source), str(prepared))
    quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _export_openvino(onnx_path: Path, xml_path: Path, dtype: str, calibration: list[Tensor] | None) -> None:
    ov = require_runtime('openvino')
    ov_model = ov.convert_model(str(onnx_path))
    if dtype == 'int8':
        nncf = require_runtime('nncf')
        with keep_signal_stack():  # NNCF compiles the model to collect its statistics
            ov_model = nncf.quantize(ov_model, nncf.Dataset(calibration, lambda x: x.numpy()),
                                     subset_size=len(calibration))
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=dtype == 'float16')


def compile_openvino(model: Any, config: dict[str, Any] | None = None) -> Any:
    """`openvino.Core().compile_model(model, 'CPU', config)` (an IR path or an `openvino.Model`), leaving the calling
    thread's alternate signal stack as it was: without that, two compiled models freed first-in, first-out leave it
    unmapped and the next handled signal crashes the process (timm_hrnet/signal_stack.py)."""
    ov = require_runtime('openvino')
    source = str(model) if isinstance(model, (str, os.PathLike)) else model
    with keep_signal_stack():
        return ov.Core().compile_model(source, 'CPU', config or {})


def run_exported(path: str | os.PathLike, fmt: str, dtype: str = 'float32',
                 precision_hint: str | None = None) -> Callable[[Tensor], list[Tensor]]:
    """A function running an exported file in its runtime on the CPU: NCHW float32 tensor in, outputs out.

    `precision_hint` (OpenVINO): the precision of what is not int8, instead of the dtype's ('bf16' runs an int8
    IR's float remainder, the exchange units' adds and resizes, in bf16 on CPUs with bf16: docs/export.md).
    """
    path = Path(path)
    if fmt == 'onnx':
        ort = require_runtime('onnxruntime')
        session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        input_dtype = np.float16 if dtype == 'float16' else np.float32
        return lambda x: [torch.from_numpy(np.asarray(o)).float()
                          for o in session.run(None, {'image': x.numpy().astype(input_dtype)})]
    compiled = compile_openvino(path, {'INFERENCE_PRECISION_HINT': precision_hint or _OPENVINO_PRECISION[dtype]})
    return lambda x: [torch.from_numpy(np.asarray(o)).float() for o in compiled(x.numpy()).to_tuple()]


def _check(run: Callable[[Tensor], list[Tensor]], model: nn.Module, sizes: Sequence[tuple[int, int]], channels: int,
           pose: bool, batch: int) -> list[ExportCheck]:
    checks = []
    generator = torch.Generator().manual_seed(0)
    for size in sizes:
        x = torch.randn(batch, channels, *size, generator=generator)
        with torch.no_grad():
            expected = _as_list(model(x))
        actual = run(x)
        if len(actual) != len(expected):
            raise ExportError(f'the exported file gives {len(actual)} outputs, the model {len(expected)}')
        diff = 0.0
        for a, e in zip(actual, expected):
            if a.shape != e.shape:
                raise ExportError(f'at {size[0]}x{size[1]} the exported file gives {tuple(a.shape)}, '
                                  f'the model {tuple(e.shape)}')
            diff = max(diff, ((a - e).abs().max() / e.abs().max().clamp_min(1e-12)).item())
        a, e = actual[0], expected[0]
        if pose:
            agreement = (a.flatten(2).argmax(2) == e.flatten(2).argmax(2)).float().mean().item()
        elif e.ndim in (2, 4) and len(expected) == 1:
            agreement = (a.argmax(1) == e.argmax(1)).float().mean().item()
        else:
            agreement = None
        checks.append(ExportCheck(tuple(size), diff, agreement))
    return checks


def export(
        model: nn.Module,
        path: str | os.PathLike,
        format: str = 'onnx',
        *,
        dtype: str = 'float32',
        input_size: Sequence[int] | None = None,
        dynamic: bool = True,
        batch_size: int = 1,
        calibration: str | os.PathLike | Sequence[Tensor] | None = None,
        check: bool = True,
        check_sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
        opset: int = 17,
        decode: bool = False,
        progress: bool = False,
) -> ExportReport:
    """Export an HRNet (classifier, `features_only` backbone, pose or segmentation model) fused, to `path`.

    `format` 'onnx' writes one `.onnx` file; 'openvino' an IR pair (`.xml` + `.bin`). `dtype`: 'float32';
    'float16' (ONNX: a half-precision graph; OpenVINO: weights stored in fp16); 'bfloat16' (OpenVINO only: the IR
    asks the CPU plugin for bf16 inference); 'int8' (static post-training quantization from `calibration`, a folder
    of images or a list of normalised input tensors: onnxruntime's for ONNX, NNCF's for OpenVINO). The model's
    input is the normalised NCHW float32 image named 'image' (float16 for a float16 ONNX graph); batch, height and
    width are dynamic unless `dynamic=False`, which fixes them to `batch_size` and the input size (runtimes plan
    their kernels for a known shape; docs/export.md says what it gains).

    With `check` the written file runs in its runtime against the PyTorch model at the export size and at
    `check_sizes` (only the export size when not dynamic); a float export whose largest relative difference
    exceeds its tolerance is removed and raises. int8 is reported, not judged: measure accuracy on your data.
    `progress` shows bars (on stderr) while int8 calibration reads its images and runs them (NNCF shows its own).

    `decode=True` (pose models) writes the decoding too: the outputs are 'keypoints' (N, J, 2) in crop pixels and
    'scores' (N, J), by the model's codec (`HRNetPose.forward_keypoints`, no flip test); the crop size is then fixed
    to the input size (the batch stays dynamic unless `dynamic=False`).
    """
    if format not in FORMATS:
        raise ExportError(f'unknown export format {format!r}: choose one of {", ".join(FORMATS)}')
    if dtype not in DTYPES:
        raise ExportError(f'unknown export dtype {dtype!r}: choose one of {", ".join(DTYPES)}')
    if format == 'onnx' and dtype == 'bfloat16':
        raise ExportError('bfloat16 ONNX graphs do not run in onnxruntime on CPU: export float32 and run it in '
                          'bf16 with format="openvino", dtype="bfloat16"')
    if dtype == 'int8' and calibration is None:
        raise ExportError('int8 needs calibration data: a folder of images like the ones the model will see')
    if batch_size < 1 or (dynamic and batch_size != 1):
        raise ExportError(f'batch_size={batch_size}: a static export (dynamic=False) takes a positive batch size; '
                          'a dynamic one runs any batch')
    if decode and not hasattr(model, 'forward_keypoints'):
        raise ExportError('decode=True exports the keypoints of a pose model; this model has no heatmap decoding')
    require_runtime('onnx')  # both formats go through ONNX
    if format == 'openvino':
        require_runtime('openvino')
    if dtype == 'int8':
        require_runtime('onnxruntime' if format == 'onnx' else 'nncf')
    if check and format == 'onnx':
        require_runtime('onnxruntime')

    target = Path(path)
    if format == 'onnx' and target.suffix != '.onnx':
        target = target.with_suffix('.onnx')
    if format == 'openvino' and target.suffix != '.xml':
        target = target.with_suffix('.xml')
    if not target.parent.is_dir():
        raise ExportError(f'cannot write {target}: {target.parent} is not a folder')
    check_writable(target)  # a read-only folder is found before the export's minutes

    reference = copy.deepcopy(model).float().eval()
    fused = reference if is_inference_optimized(reference) else optimize_for_inference(reference)
    if decode:
        reference, fused = _DecodedPose(reference), _DecodedPose(fused)
    size = export_input_size(model, input_size)
    channels = _in_chans(model)
    pose = getattr(model, 'num_joints', None) is not None and not decode
    calibration_data: list[Tensor] | None = None
    if dtype == 'int8':
        calibration_data = (calibration_inputs(model, calibration, size, progress=progress)
                            if isinstance(calibration, (str, os.PathLike)) else [t.float() for t in calibration])
        calibration_data = calibration_batches(calibration_data, batch_size)
    half_graph = format == 'onnx' and dtype == 'float16'
    example = torch.randn(batch_size, channels, *size)
    with torch.no_grad():
        names = _output_names(fused(example), decode)

    with temporary_folder(target) as work_dir:
        onnx_path = work_dir / 'model.onnx'
        _export_onnx(copy.deepcopy(fused).half() if half_graph else fused, example.half() if half_graph else example,
                     onnx_path, names, dynamic, opset, fixed_size=decode)
        if format == 'onnx':
            written = [onnx_path]
            if dtype == 'int8':
                quantized = work_dir / 'model.int8.onnx'
                _quantize_onnx(onnx_path, quantized, calibration_data, progress)
                written = [quantized]
        else:
            xml = work_dir / 'model.xml'
            _export_openvino(onnx_path, xml, dtype, calibration_data)
            written = [xml.with_suffix('.bin'), xml]
        checks: list[ExportCheck] = []
        if check:
            sizes = [size, *check_sizes] if dynamic and not decode else [size]
            run = run_exported(written[-1], format, dtype)
            checks = _check(run, reference, sizes, channels, pose, batch=2 if dynamic else batch_size)
            worst = max(c.max_rel_diff for c in checks)
            if dtype in TOLERANCE and worst > TOLERANCE[dtype]:
                raise ExportError(f'the {format} {dtype} export differs from the model by {worst:.2e} (relative), '
                                  f'more than {TOLERANCE[dtype]:.0e}; nothing was written')
        if format == 'onnx':
            os.replace(written[0], target)
        else:  # the weights first, so a reader never finds an .xml without its .bin
            os.replace(written[0], target.with_suffix('.bin'))
            os.replace(written[1], target)
    return ExportReport(target, format, dtype, size, dynamic, names, checks, None if dynamic else batch_size)
