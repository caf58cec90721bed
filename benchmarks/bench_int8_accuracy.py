"""int8 accuracy, measured rather than assumed: an HRNet classifier trained here on a real image dataset that a
package on the package index ships (scikit-learn's handwritten digits: 1797 8x8 greyscale scans, upsampled to
64x64 RGB), then exported with `timm_hrnet.export` and run in its runtime; top-1 on the held-out split for
PyTorch float32, ONNX float32, onnxruntime int8, OpenVINO float32 / bf16 / int8 (its float remainder in f32, and in
bf16); the relative error of the logits and of the `features_only` maps, and the heatmap argmax agreement of a pose
model (random weights, on scikit-learn's two sample photos) under int8.

    python benchmarks/bench_int8_accuracy.py              # about 3 minutes on 2 cores (needs scikit-learn)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import timm_hrnet  # noqa: F401  (registers our hrnet_* entrypoints in timm)
from timm_hrnet.export import export, run_exported
from timm_hrnet.tasks.pose import create_pose_model

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


def digits(size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalised (N, 3, size, size) images and labels: a fixed 75 / 25 split, stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    data = load_digits()
    x = torch.from_numpy(data.images).float()[:, None] / 16
    x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False).expand(-1, 3, -1, -1)
    x = (x - MEAN) / STD
    y = torch.from_numpy(data.target).long()
    train, test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=data.target)
    return x[train].contiguous(), y[train], x[test].contiguous(), y[test]


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, batch_size: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps = epochs * (len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for k in range(len(x) // batch_size):
            idx = order[k * batch_size:(k + 1) * batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        print(f'  epoch {epoch + 1}/{epochs}: loss {total / (len(x) // batch_size):.3f}')
    model.eval()


def batched(run, x: Tensor, batch_size: int = 64) -> Tensor:  # noqa: ANN001  (a callable giving a tensor)
    return torch.cat([run(x[k:k + batch_size]) for k in range(0, len(x), batch_size)])


def rel(actual: Tensor, expected: Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='hrnet_w18_small')
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--batch-size', type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits(args.size)
    model = timm.create_model(args.model, num_classes=10)
    start = time.time()
    print(f'training {args.model} on {len(x_train)} digits at {args.size}x{args.size}')
    train(model, x_train, y_train, args.epochs, args.batch_size)
    print(f'  trained in {time.time() - start:.0f} s')
    with torch.no_grad():
        reference = batched(model, x_test)
    calibration = [x_train[k:k + 1] for k in range(0, 300)]
    rows = [('PyTorch float32', reference)]
    with tempfile.TemporaryDirectory() as work:
        out = Path(work)
        size = (args.size, args.size)
        cases = [('ONNX float32 (onnxruntime)', 'onnx', 'float32', None), ('onnxruntime int8', 'onnx', 'int8', None),
                 ('OpenVINO float32', 'openvino', 'float32', None), ('OpenVINO bf16', 'openvino', 'bfloat16', None),
                 ('OpenVINO int8 (NNCF)', 'openvino', 'int8', None),
                 ('OpenVINO int8, bf16 remainder', 'openvino', 'int8', 'bf16')]
        for label, fmt, dtype, hint in cases:
            report = export(model, out / f'{fmt}_{dtype}', fmt, dtype=dtype, input_size=size,
                            calibration=calibration if dtype == 'int8' else None, check=False)
            run = run_exported(report.path, fmt, dtype, hint)
            rows.append((label, batched(lambda b, run=run: run(b)[0], x_test)))

        print(f'\nheld-out split: {len(y_test)} images')
        print(f'{"runtime":<30}{"top-1 %":>9}{"drop":>7}{"logits rel err":>16}{"top-1 agree %":>15}')
        base = (reference.argmax(1) == y_test).float().mean().item() * 100
        for label, logits in rows:
            top1 = (logits.argmax(1) == y_test).float().mean().item() * 100
            agree = (logits.argmax(1) == reference.argmax(1)).float().mean().item() * 100
            print(f'{label:<30}{top1:>9.2f}{base - top1:>7.2f}{rel(logits, reference):>16.2e}{agree:>15.2f}')

        features = timm.create_model(args.model, features_only=True)
        features.load_state_dict({k: v for k, v in model.state_dict().items() if k in features.state_dict()},
                                 strict=True)
        features.eval()
        sample = x_test[:32]
        with torch.no_grad():
            expected = features(sample)
        print('\nfeatures_only maps under int8 (relative max error per level, 32 held-out images):')
        for fmt in ('onnx', 'openvino'):
            report = export(features, out / f'features_{fmt}', fmt, dtype='int8', input_size=size,
                            calibration=calibration, check=False)
            maps = run_exported(report.path, fmt, 'int8')(sample)
            print(f'  {fmt:<9}' + '  '.join(f'{rel(a, e):.2e}' for a, e in zip(maps, expected)))

        from sklearn.datasets import load_sample_images
        pose = create_pose_model(_random_pose_checkpoint())
        photos = torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2).float() / 255
        crops = []
        for photo in photos:  # person-sized crops from a sliding grid, at the pose input size
            for top in range(0, photo.shape[1] - 256, 80):
                for left in range(0, photo.shape[2] - 192, 110):
                    crops.append(photo[:, top:top + 256, left:left + 192])
        crops_t = (torch.stack(crops) - MEAN) / STD
        with torch.no_grad():
            heatmaps = pose(crops_t)
        print(f'\npose heatmap argmax agreement under int8 ({len(crops)} crops of sklearn sample photos, '
              'random-weight W18-small pose model):')
        for fmt in ('onnx', 'openvino'):
            report = export(pose, out / f'pose_{fmt}', fmt, dtype='int8',
                            calibration=[crops_t[k:k + 1] for k in range(len(crops_t))], check=False)
            for hint in (None, 'bf16') if fmt == 'openvino' else (None,):
                run = run_exported(report.path, fmt, 'int8', hint)
                got = batched(lambda b, run=run: run(b)[0], crops_t, 8)
                agree = (got.flatten(2).argmax(2) == heatmaps.flatten(2).argmax(2)).float().mean().item() * 100
                label = f'{fmt}, {hint} remainder' if hint else fmt
                print(f'  {label:<25}{agree:.1f} % of joints, heatmap rel err {rel(got, heatmaps):.2e}')


def _random_pose_checkpoint() -> dict[str, Tensor]:
    """A W18-small-shaped pose model's random weights in the canonical layout (trunk of the classifier)."""
    from timm_hrnet import HRNetPose
    from timm_hrnet.variants import VARIANTS
    torch.manual_seed(0)
    model = HRNetPose(VARIANTS['hrnet_w18_small'], 17)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


if __name__ == '__main__':
    main()
