"""Draw demo/traffic_light.png, the synthetic picture used by the README's `timm-hrnet predict` example."""

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 320
LAMPS = [((230, 30, 30), True), ((240, 200, 40), False), ((40, 220, 80), False)]  # colour, lit


def draw_traffic_light() -> Image.Image:
    """A traffic light with the red lamp lit, against a sky gradient."""
    image = Image.new('RGB', (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for y in range(SIZE):
        t = y / SIZE
        draw.line([(0, y), (SIZE, y)], fill=(int(120 + 80 * t), int(170 + 60 * t), int(235 - 20 * t)))
    draw.rectangle([150, 190, 170, SIZE], fill=(60, 60, 60))
    draw.rounded_rectangle([110, 30, 210, 200], radius=14, fill=(25, 25, 25), outline=(10, 10, 10), width=3)
    for i, (colour, lit) in enumerate(LAMPS):
        centre_y = 60 + i * 52
        fill = colour if lit else tuple(channel * 3 // 8 for channel in colour)
        draw.ellipse([138, centre_y - 22, 182, centre_y + 22], fill=fill)
        draw.chord([132, centre_y - 30, 188, centre_y - 8], 180, 360, fill=(15, 15, 15))
    return image


if __name__ == '__main__':
    draw_traffic_light().save(Path(__file__).with_name('traffic_light.png'), optimize=True)
