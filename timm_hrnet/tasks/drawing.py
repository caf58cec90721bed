"""Pictures of the task outputs with PIL: skeletons per person, colour masks of label maps and their overlays."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ['draw_pose', 'distinct_colours', 'colorize_labels', 'overlay_labels', 'draw_legend']


def draw_pose(
        image: Image.Image,
        keypoints: Tensor,
        scores: Tensor,
        skeleton: Sequence[tuple[int, int]] = (),
        threshold: float = 0.3,
) -> Image.Image:
    """A copy of `image` with each person's skeleton drawn in a colour of its own; points scoring below `threshold`
    are left out.

    `keypoints` is (P, J, 2) in pixels, `scores` (P, J).
    """
    out = image.convert('RGB')
    draw = ImageDraw.Draw(out)
    radius = max(2, round(min(out.size) / 150))
    for points, confidences, colour in zip(keypoints.tolist(), scores.tolist(), distinct_colours(len(keypoints))):
        visible = [c >= threshold for c in confidences]
        for a, b in skeleton:
            if visible[a] and visible[b]:
                draw.line([tuple(points[a]), tuple(points[b])], fill=colour, width=radius)
        for (x, y), shown in zip(points, visible):
            if shown:
                box = [x - radius, y - radius, x + radius, y + radius]
                draw.ellipse(box, fill=colour, outline=(255, 255, 255))
    return out


def distinct_colours(count: int) -> list[tuple[int, int, int]]:
    """Saturated hues spread by the golden ratio, so any number of people (or neighbouring ones) are told apart."""
    colours = []
    for k in range(count):
        hue = round(255 * ((k * 0.618033988749895) % 1.0))
        colours.append(Image.new('HSV', (1, 1), (hue, 255, 255)).convert('RGB').getpixel((0, 0)))
    return colours


def colorize_labels(labels: Tensor, palette: Sequence[tuple[int, int, int]]) -> Image.Image:
    """An RGB image of a (H, W) label map, one palette colour per class."""
    table = torch.tensor(palette, dtype=torch.uint8)
    if labels.numel() and int(labels.max()) >= len(table):
        raise ValueError(f'label {int(labels.max())} has no colour in a palette of {len(table)}')
    return Image.fromarray(table[labels.cpu().long()].numpy())


def overlay_labels(
        image: Image.Image, labels: Tensor, palette: Sequence[tuple[int, int, int]], alpha: float = 0.5,
) -> Image.Image:
    """The colour mask of `labels` blended over `image` (alpha 1 shows the mask alone)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    mask = colorize_labels(labels, palette)
    base = image.convert('RGB')
    if base.size != mask.size:
        raise ValueError(
            f'label map {mask.size[1]}x{mask.size[0]} does not match the image {base.size[1]}x{base.size[0]}'
        )
    return Image.blend(base, mask, alpha)


def draw_legend(
        image: Image.Image, labels: Tensor, class_names: Sequence[str], palette: Sequence[tuple[int, int, int]],
) -> Image.Image:
    """A copy of `image` with a legend in its top-left corner: the classes present in `labels`, largest first, with
    their colours and share of the pixels (as many rows as fit; the image keeps its size)."""
    counts = torch.bincount(labels.flatten().cpu().long(), minlength=len(class_names))
    present = sorted(((int(c), k) for k, c in enumerate(counts.tolist()) if c), reverse=True)
    font = ImageFont.load_default()
    row = max(12, round(font.getbbox('Ag')[3] * 1.5))
    present = present[:max(0, (image.height - 8) // row)]
    lines = [f'{class_names[k]} {100 * c / max(labels.numel(), 1):.1f}%' for c, k in present]
    if not lines:
        return image.convert('RGB')
    width = row + 12 + max(round(font.getlength(line)) for line in lines)
    out = image.convert('RGB')
    panel = Image.new('RGBA', out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(panel)
    draw.rectangle([0, 0, width, row * len(lines) + 6], fill=(255, 255, 255, 190))
    for i, ((_, k), line) in enumerate(zip(present, lines)):
        top = 3 + i * row
        draw.rectangle([4, top + 2, row, top + row - 2], fill=(*palette[k], 255), outline=(0, 0, 0, 255))
        draw.text((row + 6, top + 1), line, fill=(0, 0, 0, 255), font=font)
    return Image.alpha_composite(out.convert('RGBA'), panel).convert('RGB')
