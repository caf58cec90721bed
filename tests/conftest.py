"""Shared fixtures: tests run offline, so the Hub is never reached from here."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ['HF_HUB_OFFLINE'] = '1'  # no network in tests, whatever the environment says

REFDATA = Path(__file__).resolve().parents[2] / 'shared' / 'refdata'


@pytest.fixture(scope='session')
def refdata() -> Path:
    """The reference fixtures next to the project root (../shared/refdata); absent in a user's clone."""
    if not REFDATA.is_dir():
        pytest.skip(f'reference fixtures not found at {REFDATA} (they live in ../shared next to the project)')
    return REFDATA


@pytest.fixture(scope='module')
def single_torch_thread():
    """One intra-op thread for modules of tiny models, where threads gain nothing and a busy machine makes
    OpenMP hand-offs dominate (modules opt in with `pytestmark = pytest.mark.usefixtures(...)`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
