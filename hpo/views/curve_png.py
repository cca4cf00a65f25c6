"""A trial's learning curve as a small PNG, drawn with Pillow in a few milliseconds.

Every trial gets one (a dashboard artifact) before it is told, so it sits on the worker's path
between trials: matplotlib took 60-350 ms per figure there, this takes a few. Two panels, as
``hpo.views.plots.plot_learning_curve`` draws for the report: train/val accuracy and train/val loss
per epoch (dashed train, solid val); epochs whose value is not finite are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

WIDTH, HEIGHT = 600, 250
PANEL = (55, 32, 230, 180)  # left, top, width, height of the first panel's plot area
GAP = 300  # x offset of the second panel
COLORS = {"train": (31, 119, 180), "val": (255, 127, 14)}
GREY, INK = (200, 200, 200), (40, 40, 40)


def _points(history: Sequence[dict], key: str) -> list[tuple[float, float]]:
    return [(float(row.get("epoch", i + 1)), float(row[key])) for i, row in enumerate(history)
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]


def _label(value: float) -> str:
    return f"{value:.3g}"


def _dashed(draw, points, color) -> None:
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        steps = max(1, int(math.hypot(x1 - x0, y1 - y0) // 6))
        for k in range(0, steps, 2):
            a, b = k / steps, min(1.0, (k + 1) / steps)
            draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a),
                       (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)], fill=color, width=2)


def _panel(draw, font, left: int, history: Sequence[dict], metric: str, ylabel: str) -> None:
    _, top, width, height = PANEL
    series = {split: _points(history, f"{split}_{metric}") for split in ("train", "val")}
    values = [v for pts in series.values() for _, v in pts]
    epochs = [e for pts in series.values() for e, _ in pts]
    draw.rectangle([left, top, left + width, top + height], outline=INK)
    draw.text((left - 50, top - 16), ylabel, fill=INK, font=font)
    draw.text((left + width // 2 - 14, top + height + 16), "epoch", fill=INK, font=font)
    if not values:
        draw.text((left + 60, top + height // 2), "no epochs recorded", fill=INK, font=font)
        return
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    first, last = min(epochs), max(epochs)
    span = max(last - first, 1.0)

    def xy(epoch: float, value: float) -> tuple[float, float]:
        return (left + 8 + (epoch - first) / span * (width - 16),
                top + 8 + (hi - value) / (hi - lo) * (height - 16))

    for k in range(5):  # horizontal grid lines with their values
        value = lo + (hi - lo) * k / 4
        _, y = xy(first, value)
        draw.line([(left + 1, y), (left + width - 1, y)], fill=GREY)
        draw.text((left - 42, y - 6), _label(value), fill=INK, font=font)
    for epoch in sorted(set(epochs))[:: max(1, len(set(epochs)) // 8)]:
        x, _ = xy(epoch, lo)
        draw.text((x - 3, top + height + 3), str(int(epoch)), fill=INK, font=font)
    for split, pts in series.items():
        pixels = [xy(e, v) for e, v in pts]
        if split == "train":
            _dashed(draw, pixels, COLORS[split])
        elif len(pixels) > 1:
            draw.line(pixels, fill=COLORS[split], width=2)
        for x, y in pixels:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLORS[split])
    for i, split in enumerate(("train", "val")):  # legend, above the panel's right end
        x, y = left + width - 110 + 55 * i, top - 16
        draw.line([(x, y + 6), (x + 16, y + 6)], fill=COLORS[split], width=2)
        draw.text((x + 20, y), split, fill=INK, font=font)


def learning_curve_png(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    _panel(draw, font, PANEL[0], history, "acc", "accuracy")
    _panel(draw, font, PANEL[0] + GAP, history, "loss", "loss")
    if title:
        draw.text((WIDTH // 2 - 3 * len(title), 2), title, fill=INK, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
