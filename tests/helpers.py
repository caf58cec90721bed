"""Small utilities shared by the test modules."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import timm
import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine params so that folding or mis-wiring shows up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return model


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a - b| relative to max |b|: the measure the reference-fixture tolerances are stated in."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def features_model(weights_file: Path, name: str = 'hrnet_w18_small', **kwargs) -> nn.Module:
    """A features model loaded with a classifier's saved weights (the pruned head's weights are dropped)."""
    overlay = dict(file=str(weights_file))
    return timm.create_model(name, pretrained=True, features_only=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def assert_checkpointing_exact(plain: nn.Module, x: torch.Tensor, selective: bool) -> None:
    """A training step under gradient checkpointing gives the same output, gradients and BatchNorm statistics."""
    checkpointed = copy.deepcopy(plain).train()
    checkpointed.set_grad_checkpointing(True, selective=selective)
    outputs = []
    for model in (plain.train(), checkpointed):
        out = model(x)
        maps = out if isinstance(out, list) else [out]  # a features model returns one map per feature
        sum((m * (i + 1)).square().mean() for i, m in enumerate(maps)).backward()
        outputs.append(maps)
    for ours, theirs in zip(*outputs, strict=True):
        assert torch.equal(ours, theirs)
    grads = {name: param.grad for name, param in checkpointed.named_parameters()}
    for name, param in plain.named_parameters():
        assert torch.equal(param.grad, grads[name]), name
    buffers = dict(checkpointed.named_buffers())
    for name, buffer in plain.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


OPENMMLAB_FIXTURES = Path(__file__).parent / 'fixtures' / 'openmmlab'


def openmmlab_fixture(name: str) -> Path:
    """A reference file made by running OpenMMLab code (tests/fixtures/openmmlab; its README says how); missing, the
    test is skipped, except in CI where it must be there."""
    path = OPENMMLAB_FIXTURES / name
    if not path.is_file():
        if os.environ.get('CI'):
            pytest.fail(f'reference fixture {path} is missing; in CI it must be there')
        pytest.skip(f'reference fixture {path} not found (made by {OPENMMLAB_FIXTURES / "make_openmmlab_ref.py"})')
    return path
