"""Shared fixtures: tests run offline, so the Hub is never reached from here."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')

REFDATA = Path(__file__).resolve().parents[2] / 'shared' / 'refdata'


@pytest.fixture(scope='session')
def refdata() -> Path:
    """The reference fixtures next to the project root (../shared/refdata); absent in a user's clone."""
    if not REFDATA.is_dir():
        pytest.skip(f'reference fixtures not found at {REFDATA} (they live in ../shared next to the project)')
    return REFDATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
