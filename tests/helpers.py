"""Small utilities shared by the test modules."""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
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


REPO_ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m timm_hrnet <args>` from the repository root, one thread per rank."""
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               '-m', 'timm_hrnet', *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS='1', **env))


def run_ranks(*args: str, world_size: int = 2, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """`python -m timm_hrnet <args>` as `world_size` ranks of one process group, each a process of its own with the
    environment torchrun would give it, but without torchrun's agent, which stops every rank as soon as one fails:
    what each rank does by itself stays visible (and a rank left waiting in a collective times out the test)."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    processes = [
        subprocess.Popen([sys.executable, '-m', 'timm_hrnet', *args], cwd=REPO_ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, OMP_NUM_THREADS='1', RANK=str(rank), LOCAL_RANK=str(rank),
                                  WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                                  MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port)))
        for rank in range(world_size)]
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [subprocess.CompletedProcess(process.args, process.returncode, out, err)
            for process, (out, err) in zip(processes, outputs, strict=True)]
