"""Files a training run writes: the resumable training state (`last.pth`) and the trained model
(`model.safetensors` + `config.json`), each written to a temporary name and renamed into place, so a run killed
while writing leaves the previous file intact.

`last.pth` holds the canonical model state dict under 'model' (and the EMA's under 'model_ema'), so
`create_pose_model` / `create_seg_model` and `read_checkpoint` also take it (the EMA weights first, as timm does).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ...outputs import write_atomic, write_json

__all__ = ['STATE_FILE', 'STATE_FORMAT', 'save_state', 'load_state', 'save_weights', 'save_sidecar']

STATE_FILE = 'last.pth'
STATE_FORMAT = 'timm_hrnet.training/1'


def save_state(path: Path, state: dict[str, Any]) -> None:
    write_atomic(path, lambda temporary: torch.save({'format': STATE_FORMAT, **state}, temporary))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """A training state written by `save_state` (torch.load with weights_only=True: no code runs)."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise ValueError(f'{path} is not a training state written by timm_hrnet training (format {STATE_FORMAT})')
    return state


def save_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    write_atomic(path, lambda temporary: safetensors.torch.save_file(tensors, str(temporary)))


def save_sidecar(path: Path, config: dict[str, Any]) -> None:
    write_json(path, config)
