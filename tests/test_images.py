"""The one image reader: every input kind, EXIF orientation, 16-bit, palette and alpha, one error naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from timm_hrnet.classification import inference_model, load_rgb_image
from timm_hrnet.images import UnreadableImageError, image_to_tensor, open_image, to_pil


def _gradient(width: int = 6, height: int = 4) -> np.ndarray:
    x = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3) * 3
    return x


def test_every_input_kind_gives_the_same_pixels(tmp_path: Path) -> None:
    array = _gradient()
    path = tmp_path / 'image.png'
    Image.fromarray(array).save(path)
    expected = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    for image in (path, str(path), Image.fromarray(array), array, torch.from_numpy(array).permute(2, 0, 1)):
        assert torch.equal(image_to_tensor(image, 3), expected)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    array = _gradient(6, 4)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    path = tmp_path / 'portrait.jpg'
    image.save(path, exif=exif, quality=100)
    upright = open_image(path)
    assert upright.size == (4, 6)
    assert image_to_tensor(path, 3).shape == (3, 6, 4)
    assert load_rgb_image(path).size == (4, 6)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / 'depth.png'
    Image.fromarray(values).save(path)
    assert open_image(path).mode.startswith('I')
    grey = image_to_tensor(path, 1)
    assert torch.equal((grey * 255).round(), torch.tensor([[[0.0, 1.0, 128.0, 255.0]]]))
    assert torch.equal(image_to_tensor(values, 1), grey)


def test_palette_and_alpha(tmp_path: Path) -> None:
    palette = Image.new('P', (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert to_pil(palette).getpixel((0, 0)) == (255, 0, 0) and to_pil(palette).getpixel((1, 0)) == (0, 0, 255)
    rgba = Image.new('RGBA', (1, 1), (10, 20, 30, 0))  # fully transparent: the colour is kept, alpha dropped
    assert to_pil(rgba).getpixel((0, 0)) == (10, 20, 30)
    assert image_to_tensor(rgba, 3).shape == (3, 1, 1)


@pytest.mark.parametrize('content', [b'', b'not an image at all', b'\x89PNG\r\n\x1a\n' + b'\x00' * 20])
def test_unreadable_files_name_themselves(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / 'broken.png'
    path.write_bytes(content)
    for read in (open_image, lambda p: image_to_tensor(p, 3), load_rgb_image):
        with pytest.raises(UnreadableImageError, match='broken.png') as info:
            read(path)
        assert info.value.path == str(path)
    with pytest.raises(UnreadableImageError, match='missing.png'):
        open_image(tmp_path / 'missing.png')


def test_truncated_file_in_a_batch_names_it(tmp_path: Path) -> None:
    good = tmp_path / 'good.jpg'
    Image.fromarray(_gradient(64, 64)).save(good)
    bad = tmp_path / 'truncated.jpg'
    bad.write_bytes(good.read_bytes()[:200])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    with pytest.raises(UnreadableImageError, match='truncated.jpg'):
        inference_model(model, [good, bad], transform=lambda image: torch.zeros(3, 4, 4))


def test_bad_arrays_and_tensors_are_refused() -> None:
    with pytest.raises(ValueError, match='uint8 or uint16'):
        image_to_tensor(np.zeros((4, 4, 3), dtype=np.float32), 3)
    with pytest.raises(ValueError, match='HW or HWC'):
        image_to_tensor(np.zeros((4, 4, 7), dtype=np.uint8), 3)
    with pytest.raises(ValueError, match='3-channel images, got a tensor with 4 channels'):
        image_to_tensor(torch.zeros(4, 8, 8), 3)
    with pytest.raises(TypeError, match='unsupported image type'):
        image_to_tensor(42, 3)
