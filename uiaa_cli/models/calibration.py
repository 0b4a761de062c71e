"""Calibration images for int8 models: the pixels the quantizer sets its ranges on.

They are made exactly as predict makes its pixels (``images.decode_image``, a cache's stored pixels),
so the int8 model sees what it will score: from ``--calibrate DATA`` (a folder, a cache, or a labels
table whose images are under ``--images``; ``calibration_pixels``), or, for ``predict --precision
int8`` without it, the inputs' first images (``input_pixels``). ``calibration_for`` says which, as a
``Calibration``. See docs/engines.md ("int8 models for CPUs").

Importing this module never imports torch or onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at

CALIBRATION_IMAGES = 128  # images the ranges come from (see the quantize module for why)
HELD_BACK_IMAGES = 64  # images scored by both models to report their agreement


@dataclass
class Calibration:
    """Where a checkpoint's int8 graph gets its calibration images: ``pixels(size)`` gives them as
    uint8 ``(N, size, size, 3)``; ``fresh``: quantize anew even when an int8 graph is kept (the user
    gave --calibrate)."""

    pixels: Callable[[int], np.ndarray]
    source: str
    fresh: bool = False


def calibration_for(arguments: list[str], images: str | None, calibrate: str | None,
                    precision: str | None) -> Calibration:
    """predict's calibration images: ``--calibrate DATA`` (quantize anew), else the inputs' first
    images, decoded as they are for scoring."""
    if calibrate is not None and precision != "int8":
        raise UiaaError("--calibrate goes with --precision int8")
    if calibrate is not None:
        return Calibration(lambda size: calibration_pixels(calibrate, size, images), calibrate, fresh=True)
    if "-" in arguments:  # stdin can be read only once, and it is for scoring
        def refuse(size: int) -> np.ndarray:
            raise UiaaError("--precision int8 with paths on stdin: give images to calibrate on with --calibrate "
                            "DATA (once; the int8 model is kept)")
        return Calibration(refuse, "")
    return Calibration(lambda size: input_pixels(arguments, size, images),
                       f"the inputs' first images (up to {CALIBRATION_IMAGES + HELD_BACK_IMAGES})")


def calibration_pixels(data: str, size: int, images: str | None = None,
                       count: int = CALIBRATION_IMAGES + HELD_BACK_IMAGES) -> np.ndarray:
    """Up to ``count`` images of ``data`` (a folder, a cache, or a labels table whose images are
    under ``images``), spread evenly over it, as uint8 ``(N, size, size, 3)`` made as predict makes
    them. Images that cannot be read are left out."""
    from uiaa_cli.pixels.cache import is_cache
    from uiaa_cli.pixels.images import decode_image, image_table, list_images, resolve_image

    path = Path(data)
    if path.is_dir():
        files = list_images(path)
        return decode_some([str(f) for f in spread(files, count)], lambda f: decode_image(f, size), size)
    if not path.is_file():
        raise UiaaError("no such file or folder of calibration images", where=at(data))
    if is_cache(path):
        from uiaa_cli.pixels.cache import CacheReader

        with CacheReader(path) as reader:
            if reader.size != size:
                raise UiaaError(f"the cache holds {reader.size} px images and the model takes {size} px: "
                                "calibrate on its labels table with --images instead", where=at(data))
            return reader.read(spread(np.arange(len(reader)), count))
    table, root = image_table(data, images)  # a labels table; anything else is a one-line error
    names = [str(n) for n in spread(table["image"].astype(str).tolist(), count)]
    return decode_some(names, lambda n: decode_image(resolve_image(root, n), size), size)


def input_pixels(arguments: list[str], size: int, images: str | None) -> np.ndarray:
    """The first inputs' pixels, decoded as predict decodes them (those that fail are left out)."""
    import itertools

    from uiaa_cli.pixels.decoding import load
    from uiaa_cli.predict.inputs import open_inputs

    pixels = []
    for item in itertools.islice(open_inputs(arguments, size, images), CALIBRATION_IMAGES + HELD_BACK_IMAGES):
        try:
            pixels.append(load(item.source, size))
        except (UiaaError, OSError, ValueError):
            continue
    return np.stack(pixels) if pixels else np.zeros((0, size, size, 3), dtype=np.uint8)


def spread(items: Any, count: int) -> list:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(np.int64)]


def decode_some(names: list[str], decode: Any, size: int) -> np.ndarray:
    """The images that decode (the others are left out: calibration needs many, not all)."""
    from uiaa_cli.pixels.images import ImageError

    out = []
    for name in names:
        try:
            out.append(decode(name))
        except (ImageError, OSError):
            continue
    return np.stack(out) if out else np.zeros((0, size, size, 3), dtype=np.uint8)
