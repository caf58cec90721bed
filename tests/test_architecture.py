"""The layout is a checked contract: import-linter's contracts in pyproject.toml, and the deprecated module paths."""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALIASES = {
    'timm_hrnet.inference': 'timm_hrnet.classification',
    'timm_hrnet.pose': 'timm_hrnet.tasks.pose',
    'timm_hrnet.segmentation': 'timm_hrnet.tasks.segmentation',
    'timm_hrnet.task_data': 'timm_hrnet.tasks.datasets',
}


def test_import_contracts_hold() -> None:
    lint = shutil.which('lint-imports', path=str(Path(sys.executable).parent)) or shutil.which('lint-imports')
    assert lint, 'import-linter is a test dependency (pip install -e ".[test]")'
    result = subprocess.run([lint, '--no-cache'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Contracts: 3 kept, 0 broken' in result.stdout, result.stdout


@pytest.mark.parametrize('old', sorted(ALIASES))
def test_old_module_paths_are_deprecated_aliases(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace('.', r'\.')):
        module = importlib.import_module(old)
    assert module is importlib.import_module(ALIASES[old])


@pytest.mark.parametrize('old', ['timm_hrnet.task_checkpoints', 'timm_hrnet.task_images', 'timm_hrnet.fuse'])
def test_split_modules_keep_their_public_names(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning):
        module = importlib.import_module(old)
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_old_fuse_names_are_the_new_classes() -> None:
    """`timm_hrnet.fuse` held the fused classes, the task models' twins too; each old name is its new class, and
    every other name is `timm_hrnet.fused`'s, as when the module was its alias."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        from timm_hrnet import fuse
    from timm_hrnet import fused
    from timm_hrnet.fused import inference_only, modules
    from timm_hrnet.tasks import pose, segmentation
    assert fuse.InferenceOnlyHRNetPose is pose.InferenceOnlyHRNetPose
    assert fuse.InferenceOnlyHRNetSeg is segmentation.InferenceOnlyHRNetSeg
    for name in ('InferenceOnlyMixin', 'InferenceOnlyModel', 'InferenceOnlyHRNet', 'InferenceOnlyHRNetFeatures',
                 'InferenceOnlyFeatureGetterNet', 'InferenceOnlyFeatureHookNet'):
        assert getattr(fuse, name) is getattr(inference_only, name)
    for name in ('InferenceBasicBlock', 'InferenceBottleneck', 'InferenceHRModule'):
        assert getattr(fuse, name) is getattr(modules, name)
    for name in fused.__all__:
        assert getattr(fuse, name) is getattr(fused, name)


def test_importing_the_package_warns_of_nothing() -> None:
    code = ('import warnings; warnings.simplefilter("error", DeprecationWarning); '
            'import timm_hrnet, timm_hrnet.tools.cli')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_task_checkpoint_alias_reads_as_before(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        from timm_hrnet.task_checkpoints import checkpoint_task
    assert checkpoint_task({'conv1.weight': None, 'final_layer.weight': None}) == 'pose'
    assert checkpoint_task({'model.conv1.weight': None, 'model.last_layer.3.weight': None, 'loss.w': None}) == \
        'segmentation'
    assert checkpoint_task({'conv1.weight': None}) is None  # a trunk without a head
    assert checkpoint_task({'encoder.weight': None}) is None  # not HRNet: None, as before, not an error
    assert checkpoint_task({}) is None
    assert checkpoint_task({'backbone.conv1.weight': None, 'decode_head.0.conv.weight': None}) is None  # 1 of 2
