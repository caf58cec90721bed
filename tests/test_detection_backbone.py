"""`hrnet_detection_backbone` as torchvision's `resnet_fpn_backbone` users expect it: `trainable_layers` and frozen
BatchNorm, checked through a FasterRCNN training step."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from timm_hrnet.necks import DETECTION_UNITS, hrnet_detection_backbone

pytestmark = pytest.mark.usefixtures('single_torch_thread')


def _trainable_units(backbone: torch.nn.Module) -> list[int]:
    return [i for i, unit in enumerate(DETECTION_UNITS)
            if any(p.requires_grad for name in unit for p in backbone.body.get_submodule(name).parameters())]


def _norms(module: torch.nn.Module) -> tuple[int, int]:
    modules = list(module.modules())
    return (sum(isinstance(m, torch.nn.BatchNorm2d) for m in modules),
            sum(isinstance(m, FrozenBatchNorm2d) for m in modules))


def test_defaults_follow_torchvision(weights_file: Path) -> None:
    """From scratch: everything trainable, ordinary BatchNorm; with weights: 3 units trainable, frozen BatchNorm."""
    scratch = hrnet_detection_backbone('hrnet_w18_small', out_channels=32)
    assert _trainable_units(scratch) == [0, 1, 2, 3, 4] and _norms(scratch)[1] == 0
    loaded = hrnet_detection_backbone('hrnet_w18_small', pretrained=True, out_channels=32,
                                      pretrained_cfg_overlay=dict(file=str(weights_file)))
    assert _trainable_units(loaded) == [2, 3, 4] and _norms(loaded)[0] == 0
    assert all(p.requires_grad for p in loaded.neck.parameters())


@pytest.mark.parametrize('trainable_layers', [0, 2, 5])
def test_trainable_layers(trainable_layers: int) -> None:
    backbone = hrnet_detection_backbone('hrnet_w18_small', out_channels=32, trainable_layers=trainable_layers)
    assert _trainable_units(backbone) == list(range(5 - trainable_layers, 5))
    frozen_norms = sum(isinstance(m, FrozenBatchNorm2d) for name in DETECTION_UNITS[0] + DETECTION_UNITS[1]
                       for m in backbone.body.get_submodule(name).modules())
    assert (frozen_norms > 0) == (trainable_layers < 4)  # frozen units keep their BatchNorm statistics too


def test_bad_trainable_layers() -> None:
    with pytest.raises(ValueError, match=r'trainable_layers must be in \[0, 5\], got 6'):
        hrnet_detection_backbone('hrnet_w18_small', trainable_layers=6)


def test_faster_rcnn_training_step() -> None:
    torch.manual_seed(0)
    backbone = hrnet_detection_backbone('hrnet_w18_small', out_channels=32, trainable_layers=2, frozen_batchnorm=True)
    assert _norms(backbone)[0] == 0
    detector = FasterRCNN(backbone, num_classes=3, min_size=128, max_size=160).train()
    frozen = {n: p.detach().clone() for n, p in backbone.body.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}
    stats = {n: b.clone() for n, b in backbone.body.named_buffers()}
    assert frozen and trained and any(n.startswith('body.stage4') for n in trained)
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.01)
    images = [torch.rand(3, 128, 150), torch.rand(3, 140, 128)]
    targets = [dict(boxes=torch.tensor([[10.0, 20.0, 70.0, 100.0]]), labels=torch.tensor([1])),
               dict(boxes=torch.tensor([[30.0, 30.0, 90.0, 120.0]]), labels=torch.tensor([2]))]
    losses = detector(images, targets)
    sum(losses.values()).backward()
    optimizer.step()
    for name, value in frozen.items():
        parameter = backbone.body.get_parameter(name)
        assert parameter.grad is None and torch.equal(parameter, value)
    named = dict(backbone.named_parameters())
    assert any(not torch.equal(named[n], v) for n, v in trained.items() if n.startswith('body.stage4'))
    assert all(torch.equal(b, stats[n]) for n, b in backbone.body.named_buffers())  # frozen BatchNorm: no updates
