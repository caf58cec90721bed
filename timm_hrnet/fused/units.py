"""The BN-folded conv units every fused layer is made of: one oneDNN kernel per conv (+ bias, residual add, ReLU)
in eager CPU inference, the plain ops everywhere else (CUDA, TorchScript, tracing/export, torch.compile, autocast,
input gradients), with the same results."""
from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ['CallState', 'ConvAct', 'ConvChain']

# private torch ops (stable since torch 2.1); without them the plain ops run, with the same results
_ONEDNN = hasattr(torch.ops.mkldnn, '_convolution_pointwise') and torch.backends.mkldnn.is_available()
# bfloat16 only where the CPU has bf16 instructions (AVX512-BF16, AMX): oneDNN's emulation is slower than plain ops
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16) if _ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported() else (
    torch.float32,)


@torch.jit.unused
def _onednn_fusable(x: Tensor) -> bool:
    """Whether oneDNN's fused conv kernels may run on `x`: eager float32/bfloat16 CPU inference, no autocast or
    autograd; torch.compile and tracing see the plain ops (inductor fuses them itself)."""
    return (
        _ONEDNN and x.is_cpu and x.dtype in _ONEDNN_DTYPES and not (x.requires_grad and torch.is_grad_enabled())
        and torch.backends.mkldnn.enabled and not torch.jit.is_tracing() and not torch.is_autocast_enabled('cpu')
        and not torch.compiler.is_compiling()
    )


# torch < 2.7 has no is_exporting; torch.export then traces through the compiler, so compiling stands in for it
# (under torch.compile the shape-agnostic path then runs too: same results, inductor fuses it either way)
_is_exporting = getattr(torch.compiler, 'is_exporting', torch.compiler.is_compiling)


@torch.jit.unused
def _exporting() -> bool:
    """Whether a graph is being recorded for export (torch.jit.trace, either ONNX exporter, torch.export), where
    only shape-agnostic ops may run: Python arithmetic on sizes would be baked into the graph as constants."""
    return torch.jit.is_tracing() or _is_exporting()


def _strictly_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class CallState(threading.local):
    """Whether the convs of one fused model may run oneDNN's fused kernels during the model's current call.

    One per fused model, shared by the model and all its `ConvAct`s: the model decides once per call (instead of
    each of its ~300 convs checking the context between kernels, milliseconds a call) and resets it to None after;
    None means no call of the model is running, and each conv decides itself. Per thread, so threads running the
    same model each see their own call's decision. Pickled and copied as a fresh state (the value only lives during
    a call); pickle and deepcopy keep one state shared within each copy of the model.
    """

    fusable: bool | None = None

    def __reduce__(self) -> tuple[type[CallState], tuple[()]]:
        return CallState, ()


class ConvAct(nn.Module):
    """A BN-folded conv with an optional ReLU, which can also add its output to another tensor before the ReLU.

    `run(x, other, inplace, relu)` computes relu?(conv(x) + other); with `inplace` the result is written into
    `other`. In eager float32/bfloat16 on CPU this is one oneDNN kernel (post-ops: sum, ReLU); channels-last, that
    kernel gets the weight already reordered into oneDNN's blocked layout (packed on first use and kept until the
    weight changes), which saves a reorder of every weight on every call. `call_state` is its model's `CallState`
    (None for a unit used on its own: then it decides per call itself).
    """

    __jit_ignored_attributes__ = ['_pack', 'call_state']
    # (weight's data_ptr and version), an alias of that weight (keeps its storage, hence its address, in use while
    # cached) and the packed weight; not state: dropped when pickled or copied, rebuilt on the next call
    _pack: tuple[tuple[int, int], Tensor, Tensor] | None = None
    call_state: CallState | None = None

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        if conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
            raise ValueError(f'ConvAct needs explicit zero padding, got {conv}')
        self.conv = conv
        self.relu = relu
        self.padding: list[int] = list(conv.padding)
        self.stride: list[int] = list(conv.stride)
        self.dilation: list[int] = list(conv.dilation)

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()
        state.pop('_pack', None)
        return state

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ConvAct:
        self.__dict__.pop('_pack', None)  # .to(), .cuda(), .bfloat16(): the packed copy is stale
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, None, False, self.relu)

    def run(self, x: Tensor, other: Tensor | None, inplace: bool, relu: bool) -> Tensor:
        if torch.jit.is_scripting():
            return self._run_plain(x, other, inplace, relu)
        else:
            return self._run_eager(x, other, inplace, relu)

    def _run_plain(self, x: Tensor, other: Tensor | None, inplace: bool, relu: bool) -> Tensor:
        y = self.conv(x)
        if other is not None:
            y = other.add_(y) if inplace else y.add_(other)
        return torch.relu_(y) if relu else y

    @torch.jit.unused
    def _run_eager(self, x: Tensor, other: Tensor | None, inplace: bool, relu: bool) -> Tensor:
        conv = self.conv
        weight = conv.weight
        state = self.call_state
        fusable = None if state is None else state.fusable  # decided by the model's call; None: decide here
        if not (_onednn_fusable(x) if fusable is None else fusable) or x.dtype != weight.dtype:
            return self._run_plain(x, other, inplace, relu)
        channels_last = _strictly_channels_last(x)
        if not channels_last and _strictly_channels_last(weight):
            x = x.contiguous(memory_format=torch.channels_last)  # a channels-last model runs channels-last
            channels_last = _strictly_channels_last(x)
        if channels_last:
            weight = self._packed_weight(weight, x)
        elif other is not None and x.dtype != torch.float32:
            return self._run_plain(x, other, inplace, relu)  # NCHW, torch adds with _add_relu, which lacks bf16
        layout = torch.channels_last if channels_last else torch.contiguous_format
        if other is not None and not other.is_contiguous(memory_format=layout):
            return self._run_plain(x, other, inplace, relu)
        args = (weight, conv.bias, self.padding, self.stride, self.dilation, conv.groups)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise.default(x, *args, 'relu' if relu else 'none', [], '')
        unary = 'relu' if relu else None
        if inplace:
            return torch.ops.mkldnn._convolution_pointwise_.binary(other, x, *args, 'add', 1.0, unary, [], None)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, *args, 'add', 1.0, unary, [], None)

    @torch.jit.unused
    def _packed_weight(self, weight: Tensor, x: Tensor) -> Tensor:
        """The weight in oneDNN's blocked layout for inputs like `x` (a different input shape still runs with it).

        Inference tensors (weights converted under torch.inference_mode) carry no version counter, so an in-place
        change would go unnoticed: those stay unpacked.
        """
        try:
            key = (weight.data_ptr(), weight._version)
        except RuntimeError:  # an inference tensor
            return weight
        if self._pack is None or self._pack[0] != key:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, self.padding, self.stride, self.dilation, self.conv.groups, list(x.shape))
            self._pack = (key, weight.detach(), packed)
        return self._pack[2]


class ConvChain(nn.Module):
    """BN-folded conv (-> ReLU) steps in a row; `accumulate` lets the last conv add into another tensor."""

    def __init__(self, steps: list[ConvAct]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: Tensor) -> Tensor:
        for step in self.steps:
            x = step(x)
        return x

    def accumulate(self, x: Tensor, other: Tensor, inplace: bool, relu: bool) -> Tensor:
        """relu?(chain(x) + other), written into `other` when `inplace`."""
        last = len(self.steps) - 1
        for k, step in enumerate(self.steps):
            if k < last:
                x = step(x)
            else:
                x = step.run(x, other, inplace, relu)
        return x
