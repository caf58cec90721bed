"""verify compares a staged repo with its source through code that did not produce it; a wrong mapping fails.

The converter is replaced here by one that swaps two same-shaped tensors (a plausible key-mapping bug). With timm's
built-in HRNet (canonical layout) or mmpretrain's model (its layout) as the reference, verification fails; where no
independent implementation exists, the bug passes, and the report and the card say that only self-consistency was
checked. mmpretrain is not installed here: a stand-in package built on timm's built-in HRNet, with its own key
mapping written below, takes its place to show that path is taken whenever ``import mmpretrain`` works.
"""

from __future__ import annotations

import importlib.machinery
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import timm.models.hrnet as builtin_hrnet
import torch
from reference_sources import REFERENCE_SOURCES, reference_run
from small_checkpoints import SMALL_MODEL, SmallCheckpoints

import hub_upload.classifier
import hub_upload.reference
import timm_hrnet.convert
from hub_upload.__main__ import main
from hub_upload.stage import VerificationError, convert_to_dir

pytestmark = pytest.mark.usefixtures('single_torch_thread')


def _swapping(convert: Callable) -> Callable:
    """``convert`` with a mapping bug: the first two different same-shaped 3x3 conv weights trade places."""
    def wrong_convert(*args, **kwargs) -> dict[str, torch.Tensor]:
        state_dict = convert(*args, **kwargs)
        seen: dict[tuple, str] = {}
        for key, value in state_dict.items():
            if value.ndim == 4 and value.shape[-1] == 3:
                other = seen.setdefault(tuple(value.shape), key)
                if other != key and not torch.equal(state_dict[other], value):
                    state_dict[key], state_dict[other] = state_dict[other], value
                    return state_dict
        raise AssertionError('no two same-shaped convs to swap')
    return wrong_convert


@pytest.fixture
def wrong_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every module that converts uses the buggy converter (the self-consistency reference included)."""
    wrong = _swapping(timm_hrnet.convert.convert_state_dict)
    for module in (timm_hrnet.convert, hub_upload.classifier, hub_upload.reference):
        monkeypatch.setattr(module, 'convert_state_dict', wrong)


def test_a_planted_wrong_mapping_fails_against_timms_builtin_hrnet(
        small: SmallCheckpoints, tmp_path: Path, wrong_mapping: None) -> None:
    with pytest.raises(VerificationError) as error:
        convert_to_dir(small.canonical_pth, SMALL_MODEL, tmp_path / 'repo', verify_image_size=32)
    message = str(error.value)
    assert "verify FAILED: " in message and "through timm's built-in hrnet_w18_small" in message
    assert len(message.splitlines()) == 1 and not (tmp_path / 'repo').exists()


def test_without_an_independent_path_the_report_and_card_say_self_consistency_only(
        small: SmallCheckpoints, tmp_path: Path, wrong_mapping: None, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'repo'
    args = ['convert', str(small.mmpretrain_pth), '--model', SMALL_MODEL, '--out', str(out), '--image-size', '32']
    assert main(args) == 0  # the bug goes unnoticed: nothing independent of the converter reads this layout
    assert 'verify OK (self-consistency only)' in capsys.readouterr().out
    card = (out / 'README.md').read_text()
    assert 'only for self-consistency' in card and "reproduces the source checkpoint's outputs" not in card


def test_the_card_of_an_independent_check_names_the_reference(
        small: SmallCheckpoints, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'repo'
    assert main(['convert', str(small.canonical_pth), '--model', SMALL_MODEL, '--out', str(out),
                 '--image-size', '32']) == 0
    card = (out / 'README.md').read_text()
    assert "reproduces the source checkpoint's outputs as computed by timm's built-in hrnet_w18_small" in card
    assert main(['verify', str(out), '--image-size', '32']) == 0
    assert "vs its own weights through timm's built-in hrnet_w18_small" in capsys.readouterr().out


# --- mmpretrain stand-in -------------------------------------------------------------------------------------------

_FROM_MMPRETRAIN = (  # mmpretrain's key names -> the built-in model's, written independently of timm_hrnet.convert
    (r'^backbone\.', ''),
    (r'^neck\.0\.increase_layers\.', 'incre_modules.'),
    (r'^neck\.0\.downsample_layers\.(\d+)\.conv\.', r'downsamp_modules.\1.0.'),
    (r'^neck\.0\.downsample_layers\.(\d+)\.bn\.', r'downsamp_modules.\1.1.'),
    (r'^neck\.0\.final_layer\.conv\.', 'final_layer.0.'),
    (r'^neck\.0\.final_layer\.bn\.', 'final_layer.1.'),
    (r'^head\.fc\.', 'classifier.'),
)


class StandInClassifier(torch.nn.Module):
    """What the reference needs of mmpretrain's ImageClassifier: mmpretrain's state-dict keys and forward(mode=)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        width = int(cfg['backbone']['arch'][1:])
        assert cfg['neck'][0]['in_channels'] == (width, 2 * width, 4 * width, 8 * width)
        with torch.device('meta'):  # mmpretrain's neck convs have no bias
            self.net = builtin_hrnet.HighResolutionNet(
                builtin_hrnet.cfg_cls[f'hrnet_w{width}'], num_classes=cfg['head']['num_classes'], head_conv_bias=False)
        self.net.to_empty(device='cpu')  # every tensor is loaded; the counters are set as BatchNorm does
        for name, buffer in self.net.named_buffers():
            if name.endswith('num_batches_tracked'):
                buffer.zero_()

    def load_state_dict(self, state_dict: dict, strict: bool = True):
        renamed = {}
        for key, value in state_dict.items():
            for pattern, replacement in _FROM_MMPRETRAIN:
                key, count = re.subn(pattern, replacement, key)
                if count:
                    break
            renamed[key] = value
        return self.net.load_state_dict(renamed, strict=strict)

    def forward(self, x: torch.Tensor, mode: str = 'predict') -> torch.Tensor:
        assert mode == 'tensor'
        return self.net(x)


@pytest.fixture
def mmpretrain_stand_in(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    built: list[dict] = []
    package = types.ModuleType('mmpretrain')
    package.__spec__ = importlib.machinery.ModuleSpec('mmpretrain', None)
    package.__version__ = 'stand-in'
    models = types.ModuleType('mmpretrain.models')
    models.build_classifier = lambda cfg: built.append(cfg) or StandInClassifier(cfg)
    package.models = models
    monkeypatch.setitem(sys.modules, 'mmpretrain', package)
    monkeypatch.setitem(sys.modules, 'mmpretrain.models', models)
    return built


@pytest.mark.parametrize('source_name', REFERENCE_SOURCES)
def test_mmpretrain_checkpoints_are_verified_by_mmpretrain_when_it_is_installed(
        source_name: str, tmp_path: Path, mmpretrain_stand_in: list[dict], wrong_mapping: None) -> None:
    run = reference_run(source_name, 'mmpretrain', tmp_path)  # an mmpretrain 1.2.0 checkpoint and its outputs
    source = run.checkpoint
    state_dict = hub_upload.reference.read_source_state_dict(source)
    reference = hub_upload.reference.build_reference(state_dict, 'hrnet_w18', 'mmpretrain')
    assert reference.independent and reference.description.startswith("mmpretrain's own ImageClassifier")
    assert mmpretrain_stand_in[0]['head'] == dict(type='LinearClsHead', in_channels=2048, num_classes=1000)
    with torch.no_grad():  # the reference computes what real mmpretrain computed for this checkpoint
        torch.testing.assert_close(reference.model(run.input), run.outputs['logits'], rtol=1e-4, atol=1e-4)
    with pytest.raises(VerificationError, match="through mmpretrain's own ImageClassifier"):
        convert_to_dir(source, 'hrnet_w18', tmp_path / 'w18', verify_image_size=32)
    assert not (tmp_path / 'w18').exists()
