"""Shared fixtures: tests run offline, so the Hub is never reached from here."""
from __future__ import annotations

import os

# huggingface_hub reads this once, when first imported: set it before anything (timm included) imports it
os.environ['HF_HUB_OFFLINE'] = '1'  # no network in tests, whatever the environment says

from collections.abc import Generator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import safetensors.torch  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from helpers import randomize_batchnorm  # noqa: E402
from reference_sources import REFDATA, refdata_folder  # noqa: E402
from small_checkpoints import SmallCheckpoints, write_small_checkpoints  # noqa: E402

_REFDATA_DESELECTED = pytest.StashKey[int]()

# Under pytest-xdist the workers share the cores: torch's default (one thread per core in every worker)
# oversubscribes them, and OpenMP hand-offs between busy cores cost more than the threads gain.
if os.environ.get('PYTEST_XDIST_WORKER_COUNT'):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ['PYTEST_XDIST_WORKER_COUNT'])))


@pytest.fixture(scope='session')
def refdata() -> Path:
    """The reference fixtures next to the project root (../shared/refdata); absent in a user's clone."""
    return refdata_folder()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'refdata: needs ../shared/refdata (deselected where absent, outside CI)')


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside CI, leave out the tests of ../shared/refdata where it is absent: the committed fixtures under
    tests/fixtures make the same checks, so a plain clone runs every equivalence test and skips none. In CI its
    absence stays a failure (the `refdata` skip is turned into one below)."""
    if REFDATA.is_dir() or os.environ.get('CI'):
        return
    deselected = [item for item in items if 'refdata' in item.fixturenames or item.get_closest_marker('refdata')]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        left_out = set(deselected)
        items[:] = [item for item in items if item not in left_out]
    config.stash[_REFDATA_DESELECTED] = len(deselected)


def _refdata_line(count: str) -> str:
    return (f'{count} deselected: they check against {REFDATA}, which is absent here (outside CI); '
            'the committed fixtures under tests/fixtures make the same checks')


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Under xdist the workers collect, so the controller says why without the count."""
    distributed = getattr(config.option, 'numprocesses', None) and not hasattr(config, 'workerinput')
    if distributed and not REFDATA.is_dir() and not os.environ.get('CI'):
        return [_refdata_line('tests of ../shared/refdata')]
    return []


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    count = config.stash.get(_REFDATA_DESELECTED, 0)
    return [_refdata_line(f'{count} tests of ../shared/refdata')] if count else []


@pytest.fixture(scope='module')
def single_torch_thread():
    """One intra-op thread for modules of tiny models, where threads gain nothing and a busy machine makes
    OpenMP hand-offs dominate (modules opt in with `pytestmark = pytest.mark.usefixtures(...)`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='module')
def small(tmp_path_factory: pytest.TempPathFactory) -> SmallCheckpoints:
    """hrnet_w18_small weights saved as canonical safetensors, canonical .pth and an mmpretrain checkpoint."""
    return write_small_checkpoints(tmp_path_factory.mktemp('small'))


@pytest.fixture(scope='module')
def classifier() -> torch.nn.Module:
    """An hrnet_w18_small classifier with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    return randomize_batchnorm(timm.create_model('hrnet_w18_small')).eval()


@pytest.fixture(scope='module')
def weights_file(classifier: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `classifier`'s weights as a safetensors file."""
    path = tmp_path_factory.mktemp('weights') / 'hrnet_w18_small.safetensors'
    safetensors.torch.save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# In CI every optional test dependency and the reference fixtures must be there: a skip for a missing one would
# hide an install that silently broke, so there it fails instead.
_CI_FORBIDDEN_SKIPS = ('could not import', 'reference fixtures not found')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get('CI') and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if any(text in reason for text in _CI_FORBIDDEN_SKIPS):
            report.outcome = 'failed'
            report.longrepr = f'skipped in CI, where it must run: {reason}'
