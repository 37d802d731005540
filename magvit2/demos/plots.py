"""Small PNG charts drawn with Pillow (no plotting library needed): training curves for logs and the demo."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))


def read_metrics_csv(path: str | os.PathLike) -> dict[str, tuple[list[float], list[float]]]:
    """Lightning CSVLogger metrics.csv -> {column: (steps, values)} for every column with a number in it."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    xs, ys = series.setdefault(key, ([], []))
                    xs.append(float(step))
                    ys.append(v)
    return series


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def line_panels(
    panels: dict[str, tuple[list[float], list[float]]],
    path: str | os.PathLike,
    *,
    width: int = 360,
    height: int = 220,
    columns: int = 3,
    smooth: int = 1,
) -> Path:
    """One small line chart per named series, laid out in a grid, with min/max labels; returns the path."""
    from PIL import Image, ImageDraw

    names = [n for n, (xs, _) in panels.items() if len(xs) >= 2]
    rows = max(1, math.ceil(len(names) / columns))
    img = Image.new("RGB", (width * min(columns, max(1, len(names))), height * rows), "white")
    draw = ImageDraw.Draw(img)
    for k, name in enumerate(names):
        xs, ys = panels[name]
        ys = _smooth(ys, smooth) if 1 < smooth and 5 * smooth <= len(ys) else ys  # sparse series (validation) as-is
        ox, oy = (k % columns) * width, (k // columns) * height
        left, top, right, bottom = ox + 50, oy + 24, ox + width - 12, oy + height - 24
        draw.rectangle((left, top, right, bottom), outline=(180, 180, 180))
        draw.text((ox + 8, oy + 6), name, fill=(0, 0, 0))
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        if y1 == y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        points = [
            (left + (x - x0) / max(x1 - x0, 1e-12) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))
            for x, y in zip(xs, ys, strict=True)
        ]
        draw.line(points, fill=PALETTE[k % len(PALETTE)], width=2)
        draw.text((ox + 4, top - 2), f"{y1:.3g}", fill=(90, 90, 90))
        draw.text((ox + 4, bottom - 10), f"{y0:.3g}", fill=(90, 90, 90))
        draw.text((left, bottom + 6), f"step {x0:.0f}", fill=(90, 90, 90))
        draw.text((right - 70, bottom + 6), f"{x1:.0f}", fill=(90, 90, 90))
    path = Path(path)
    img.save(path)
    return path
