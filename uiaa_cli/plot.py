"""``evaluate --plot``: a scatter of predicted against true score, drawn with Pillow (no matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".gif": "GIF",
                 ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def plot_format(path: str | Path) -> str:
    """Pillow's format for the plot's extension (PNG for a device or pipe); an unknown one is an error."""
    from uiaa_cli.tables.outputs import is_special

    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_FORMATS:
        return IMAGE_FORMATS[suffix]
    if is_special(path):
        return "PNG"
    raise UiaaError(f"unknown image extension {suffix or '(none)'!r}: name the plot .png, .jpg, .webp, .gif, "
                    ".bmp or .tif", where=at(str(path), output=True))


def scatter_png(result: Any, predictions: Any, labels: Any, path: Path, size: int = 640) -> None:
    """Predicted score (y) against mean vote (x) on the labels' scale, with the diagonal and SRCC."""
    from PIL import Image, ImageDraw

    from uiaa_cli.tables.outputs import atomic_output
    from uiaa_cli.targets.labels import table_bins

    pi, li = result.rows  # the rows evaluate joined (by path, or by file stem)
    x = labels.matrix(["mean"])[li, 0]
    y = predictions.matrix(["score"])[pi, 0]
    bins = table_bins(labels)
    lo = float(min(bins.min() if len(bins) else x.min(), x.min(), y.min()))
    hi = float(max(bins.max() if len(bins) else x.max(), x.max(), y.max()))
    margin = 48
    span = size - 2 * margin

    def to_px(v: np.ndarray, flip: bool) -> np.ndarray:
        t = (v - lo) / (hi - lo or 1.0)
        return margin + (1 - t if flip else t) * span

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([margin, margin, size - margin, size - margin], outline="black")
    draw.line([margin, size - margin, size - margin, margin], fill=(200, 60, 60))
    for px, py in zip(to_px(x, False), to_px(y, True)):
        draw.ellipse([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=(30, 90, 180))
    srcc, ratio = result.metrics.get("srcc"), result.metrics.get("sd_ratio")
    shown = ", ".join(f"{name} = {'n/a' if v is None else f'{v:.3f}'}" for name, v in (("SRCC", srcc),
                                                                                      ("sd ratio", ratio)))
    draw.text((margin, 12), f"predicted vs mean vote, n = {len(x):,}, {shown}", fill="black")
    draw.text((margin, size - margin + 8), f"mean vote ({lo:g} .. {hi:g})", fill="black")
    draw.text((4, margin - 16), "predicted", fill="black")
    with atomic_output(path) as tmp:
        img.save(tmp, format=plot_format(path))
