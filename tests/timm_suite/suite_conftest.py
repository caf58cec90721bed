"""The conftest.py of timm's test_models.py: run_timm_model_tests.py copies it there, so pytest loads it first.

timm_hrnet is imported here, before timm's test module computes its parametrisations from the registry, so every
selected hrnet test runs on our models. A selected test that skips counts as a failure: the point is that every
test timm applies to a model passes.
"""
from __future__ import annotations

import os

import pytest

BUILTIN = os.environ.get('TIMM_SUITE_BUILTIN') == '1'

# as in tests/conftest.py: pytest-xdist workers (`-- -n 2`) split the cores instead of each taking all of them
if os.environ.get('PYTEST_XDIST_WORKER_COUNT'):
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ['PYTEST_XDIST_WORKER_COUNT'])))

if not BUILTIN:
    import timm

    import timm_hrnet  # noqa: F401  (registers the hrnet_* models with timm)

    _module = timm.models.model_entrypoint('hrnet_w18').__module__
    assert _module == 'timm_hrnet.hrnet', f'hrnet_w18 resolves to {_module}, not timm_hrnet'

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.testscollected == 0:
        print('\nno hrnet test was selected from timm\'s suite')
        session.exitstatus = 1
    elif _skipped and not BUILTIN:
        print(f'\n{len(_skipped)} selected test(s) skipped, which counts as a failure here: {_skipped}')
        session.exitstatus = 1
