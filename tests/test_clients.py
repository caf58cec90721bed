"""The libraries people plug HRNet into: segmentation_models_pytorch encoders and torchvision detection."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.ops import FeaturePyramidNetwork

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints with timm)
from timm_hrnet import HRNetFeatures
from timm_hrnet.necks import HRNetDetectionBackbone, HRNetV2p, hrnet_detection_backbone

smp = pytest.importorskip('segmentation_models_pytorch')

# (decoder, smallest decoder settings it accepts, in_channels, image size, batch): together every in_channels and size;
# ASPP (DeepLabV3Plus) and PSP (UPerNet) pool to 1x1 before a BatchNorm, which needs a batch of 2 in train mode
SMP_CASES = [
    ('Unet', dict(decoder_channels=(16, 16, 16, 16, 16)), 1, (256, 256), 1),
    ('FPN', dict(decoder_pyramid_channels=32, decoder_segmentation_channels=32), 3, (256, 320), 1),
    ('DeepLabV3Plus', dict(decoder_channels=32), 4, (256, 320), 2),
    ('UPerNet', dict(decoder_channels=32), 3, (256, 256), 2),
]


@pytest.mark.parametrize(
    ('decoder', 'settings', 'in_channels', 'size', 'batch'), SMP_CASES, ids=[case[0] for case in SMP_CASES]
)
def test_smp_encoder_train_step(
        decoder: str, settings: dict, in_channels: int, size: tuple[int, int], batch: int
) -> None:
    torch.manual_seed(0)
    model = getattr(smp, decoder)('tu-hrnet_w18', encoder_weights=None, in_channels=in_channels, classes=2, **settings)
    backbone = model.encoder.model
    assert isinstance(backbone, HRNetFeatures)  # smp goes through timm.create_model, which now builds ours
    assert backbone.conv1.in_channels == in_channels
    output_stride = 16 if decoder == 'DeepLabV3Plus' else 32  # DeepLabV3Plus asks for output stride 16
    assert backbone.feature_info.reduction() == [2, 4, 8, 16, output_stride]

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images = torch.randn(batch, in_channels, *size)
    masks = torch.randint(0, 2, (batch, *size))
    logits = model.train()(images)
    assert logits.shape == (batch, 2, *size)
    loss = torch.nn.functional.cross_entropy(logits, masks)
    loss.backward()
    stem_grad = backbone.conv1.weight.grad
    assert stem_grad is not None and torch.isfinite(stem_grad).all() and stem_grad.abs().sum() > 0
    before = backbone.conv1.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, backbone.conv1.weight)


def test_torchvision_fpn_over_features() -> None:
    body = timm.create_model('hrnet_w18_small', features_only=True).eval()
    fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels=32)
    with torch.no_grad():
        features = body(torch.randn(1, 3, 77, 109))
        pyramid = fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
    assert list(pyramid) == ['0', '1', '2', '3', '4']
    for level, feature in zip(pyramid.values(), features):
        assert level.shape == (1, 32, *feature.shape[-2:])


def test_torchvision_faster_rcnn_on_hrnetv2p() -> None:
    torch.manual_seed(0)
    backbone = hrnet_detection_backbone('hrnet_w18_small', out_channels=64)
    assert isinstance(backbone, HRNetDetectionBackbone) and isinstance(backbone.body, HRNetFeatures)
    assert isinstance(backbone.neck, HRNetV2p) and backbone.out_channels == 64
    detector = FasterRCNN(backbone, num_classes=3, min_size=192, max_size=256).eval()
    images = [torch.rand(3, 200, 240), torch.rand(3, 256, 192)]
    with torch.no_grad():
        detections = detector(images)
    assert len(detections) == 2
    for detection, image in zip(detections, images):
        boxes = detection['boxes']
        assert boxes.shape[1] == 4 and len(detection['labels']) == len(detection['scores']) == len(boxes)
        height, width = image.shape[-2:]
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()  # mapped back to each image
