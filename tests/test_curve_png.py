"""The per-trial learning-curve PNG (Pillow, on the worker's path between trials)."""

from __future__ import annotations

import math

from PIL import Image

from hpo.views.curve_png import COLORS, HEIGHT, WIDTH, learning_curve_png


def _history(n: int) -> list[dict]:
    return [{"epoch": i + 1, "train_acc": 0.3 + 0.05 * i, "val_acc": 0.28 + 0.04 * i,
             "train_loss": 2 - 0.1 * i, "val_loss": 2.1 - 0.08 * i} for i in range(n)]


def _colors(path) -> set:
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
    return {c for _, c in image.convert("RGB").getcolors(WIDTH * HEIGHT)}


def test_curve_draws_train_and_val_series(tmp_path):
    colors = _colors(learning_curve_png(_history(5), tmp_path / "a" / "c.png", title="trial 3"))
    assert COLORS["train"] in colors and COLORS["val"] in colors


def test_curve_survives_empty_history_and_non_finite_values(tmp_path):
    assert COLORS["val"] not in _colors(learning_curve_png([], tmp_path / "empty.png"))
    diverged = [{"epoch": 1, "train_acc": 0.1, "val_acc": 0.1, "train_loss": math.nan,
                 "val_loss": math.inf}]
    assert COLORS["val"] in _colors(learning_curve_png(diverged, tmp_path / "nan.png"))
