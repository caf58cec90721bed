"""What the benchmark scripts share: the line naming the machine a result was measured on, and models with
non-trivial BatchNorm statistics (so that folding them is real work and exports are checked on real numbers)."""
from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import nn


def machine_line(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (as lscpu gives it) with the intra-op thread count."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    cpuinfo = Path('/proc/cpuinfo')
    names = [line.split(':', 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith('model name')] if cpuinfo.is_file() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f'{cpu}, {torch.get_num_threads()} threads'


def randomize_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (as tests/helpers.py gives the test models)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
    return model
