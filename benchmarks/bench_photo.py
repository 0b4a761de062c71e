"""What a photographer's files cost per image, next to a 640x480 JPEG, in one run: a 24-megapixel
(6000 x 4000) JPEG with Pillow's draft (as uiaa decodes it) and without (a full decode), a 6000 x 4000
DNG with its full-size JPEG preview (what uiaa reads), and the same DNG without a preview (a half-size
demosaic through LibRaw). Each is ``images.decode_image`` to the model's 224 px, the whole of the
per-image work before the network (the same network then runs on every kind of file).

Bars: the 24 MP JPEG with draft decodes at least 2x faster than without it (draft scales by 1/8
inside libjpeg: the inverse DCT, colour conversion and resize see 750 x 500 pixels instead of 24
million; the entropy decoding of the whole 6 MB file is not scaled, and is what remains); the DNG
with a preview costs within 1.5x of the 24 MP JPEG (it is one: a JPEG inside a TIFF, plus LibRaw's
parse).

The files are made here: a photo-like picture at 1500 x 1000, upscaled and given sensor noise, saved
at JPEG quality 90 (about 5 MB, as a camera's fine JPEG), and a DNG written by tifffile (the mosaic
12-bit RGGB, LibRaw-readable; the preview the same JPEG). Needs the photo extra and tifffile.

    .venv/bin/python benchmarks/bench_photo.py           # ~1 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from uiaa_cli.pixels import images

from _common import REPO, best_of, report

sys.path.insert(0, str(REPO / "tests"))
from photo_files import save_dng, scene  # noqa: E402  - the tests' DNG writer (tifffile)


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like picture of ``width`` x ``height`` with fine noise (JPEG sizes as a camera's)."""
    small = scene(seed, max(width // 4, 16), max(height // 4, 12))
    big = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-6, 7, (height, width, 1), dtype=np.int16)
    return np.clip(big + noise, 0, 255).astype(np.uint8)


def per_image(path: Path, size: int, repeat: int, draft: bool = True) -> float:
    """Seconds per ``decode_image(path, size)``, the best of ``repeat`` runs of a few decodes each."""
    from PIL import JpegImagePlugin

    original = JpegImagePlugin.JpegImageFile.draft
    if not draft:
        JpegImagePlugin.JpegImageFile.draft = lambda self, mode, size: None  # a full decode, for comparison
    try:
        decodes = 3
        return best_of(lambda: [images.decode_image(path, size) for _ in range(decodes)], repeat) / decodes
    finally:
        JpegImagePlugin.JpegImageFile.draft = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="the model's input (default 224)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    images.resize_without_torch()  # as predict decodes
    with tempfile.TemporaryDirectory(prefix="uiaa-bench-photo-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        small, large = photo(640, 480, 1), photo(6000, 4000, 2)
        Image.fromarray(small).save(root / "small.jpg", quality=90)
        Image.fromarray(large).save(root / "large.jpg", quality=90)
        save_dng(root / "preview.dng", large, preview=True)
        save_dng(root / "mosaic.dng", large, preview=False)
        print(f"files made in {time.perf_counter() - started:.1f} s: "
              + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(root.iterdir())))
        cost = {
            "640x480 JPEG": per_image(root / "small.jpg", args.size, args.repeat),
            "6000x4000 JPEG (draft)": per_image(root / "large.jpg", args.size, args.repeat),
            "6000x4000 JPEG (full decode)": per_image(root / "large.jpg", args.size, args.repeat, draft=False),
            "6000x4000 DNG with preview": per_image(root / "preview.dng", args.size, args.repeat),
            "6000x4000 DNG, no preview (half-size demosaic)": per_image(root / "mosaic.dng", args.size, 1),
        }
    base = cost["640x480 JPEG"]
    print(f"\nper image, decode_image to {args.size} px (the best of {args.repeat}):\n")
    width = max(map(len, cost))
    for what, seconds in cost.items():
        print(f"{what:<{width}}  {1000 * seconds:8.1f} ms  {seconds / base:6.1f}x the 640x480 JPEG")
    draft_gain = cost["6000x4000 JPEG (full decode)"] / cost["6000x4000 JPEG (draft)"]
    dng_vs_jpeg = cost["6000x4000 DNG with preview"] / cost["6000x4000 JPEG (draft)"]
    ok = report("bench_photo: photographers' files", [
        ("24 MP JPEG: full decode / with draft", f"{draft_gain:.1f}x", ">= 2x", draft_gain >= 2),
        ("DNG with preview / 24 MP JPEG", f"{dng_vs_jpeg:.2f}x", "<= 1.5x", dng_vs_jpeg <= 1.5),
    ])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
