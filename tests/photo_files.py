"""Real photo files for the photographers' tests: DNGs written by tifffile (read back by LibRaw),
HEIC by pillow-heif, JPEGs with EXIF times, darktable-style sidecars, planted bursts, and a tiny
uiaa checkpoint."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

SIZE = 32  # the test models' input


def scene(seed: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A photo-like picture, different for each seed: a smooth backdrop, a few shapes, fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    out = np.zeros((height, width, 3))
    for c in range(3):  # a backdrop of a few random low frequencies
        for _ in range(3):
            fx, fy, phase = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.3)]
            out[..., c] += rng.uniform(20, 60) * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    out += rng.uniform(60, 160, 3)
    for _ in range(4):  # shapes with sharp edges
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        rx, ry = rng.uniform(0.06, 0.25) * width, rng.uniform(0.06, 0.25) * height
        inside = ((np.arange(width)[None] - cx) / rx) ** 2 + ((np.arange(height)[:, None] - cy) / ry) ** 2 < 1
        out[inside] = rng.uniform(0, 255, 3)
    out += rng.normal(0, 12, (height, width, 1))  # texture: what blur takes away
    return np.clip(out, 0, 255).astype(np.uint8)


def frame(pixels: np.ndarray, shift: tuple[int, int] = (0, 0), exposure: float = 1.0, blur: float = 0.0) -> np.ndarray:
    """Another frame of the same moment: shifted (the edge repeated), brighter or darker, blurred."""
    dy, dx = shift
    height, width = pixels.shape[:2]
    rows = np.clip(np.arange(height) - dy, 0, height - 1)
    cols = np.clip(np.arange(width) - dx, 0, width - 1)
    out = pixels[rows][:, cols].astype(np.float64)
    out = np.clip(out * exposure, 0, 255).astype(np.uint8)
    image = Image.fromarray(out)
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(image)


def burst(seed: int, frames: int = 4) -> list[np.ndarray]:
    """A planted burst: frame 0 sharp, the others shifted, re-exposed and blurred (the sharpest is frame 0)."""
    rng = np.random.default_rng(1000 + seed)
    base = scene(seed)
    out = [frame(base, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), float(rng.uniform(0.9, 1.1)))]
    for _ in range(frames - 1):
        out.append(frame(base, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), float(rng.uniform(0.75, 1.3)),
                         float(rng.uniform(1.5, 3.0))))
    return out


def save_jpeg(path: Path, pixels: np.ndarray, when: str | None = None, subsec: str | None = None,
              orientation: int | None = None, quality: int = 92) -> Path:
    """A JPEG, with EXIF DateTimeOriginal (and SubSecTimeOriginal) and an orientation if given."""
    exif = Image.Exif()
    if when is not None:
        ifd = exif.get_ifd(0x8769)
        ifd[0x9003] = when
        if subsec is not None:
            ifd[0x9291] = subsec
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=quality, exif=exif.tobytes())
    return path


def bayer(pixels: np.ndarray, white: int = 4095) -> np.ndarray:
    """An RGGB mosaic of an RGB picture, 12-bit: what a camera's sensor records."""
    rgb = pixels.astype(np.float64) / 255.0 * white
    mosaic = np.empty(pixels.shape[:2], dtype=np.uint16)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return mosaic


def save_dng(path: Path, pixels: np.ndarray, preview: bool = True, orientation: int = 1,
             preview_pixels: np.ndarray | None = None) -> Path:
    """A DNG as cameras and Adobe's converter lay it out, written by tifffile: IFD0 holds the
    full-size JPEG preview (NewSubFileType 1; with ``preview=False`` none), its SubIFD the CFA
    mosaic (NewSubFileType 0, RGGB, 12-bit); DNGVersion 1.4, the camera's names and orientation.
    ``preview_pixels`` puts a different picture (of any size) in the preview, to tell which was decoded."""
    import tifffile

    shown = pixels if preview_pixels is None else preview_pixels
    camera = [(271, "s", 0, "uiaa", True), (272, "s", 0, "test camera", True), (274, "H", 1, orientation, True),
              (50706, "B", 4, (1, 4, 0, 0), True), (50708, "s", 0, "uiaa test camera", True)]
    cfa = [(33421, "H", 2, (2, 2), True), (33422, "B", 4, (0, 1, 1, 2), True), (50717, "I", 1, 4095, True)]
    with tifffile.TiffWriter(path) as tif:
        if preview:
            buffer = io.BytesIO()
            Image.fromarray(shown).save(buffer, "JPEG", quality=92)
            tif.write(iter([buffer.getvalue()]), shape=shown.shape, dtype="uint8", compression="jpeg",
                      photometric="ycbcr", subsampling=(2, 2), rowsperstrip=shown.shape[0], subfiletype=1,
                      subifds=1, extratags=camera)
            tif.write(bayer(pixels), photometric="cfa", subfiletype=0, extratags=cfa)
        else:
            tif.write(bayer(pixels), photometric="cfa", subfiletype=0, extratags=camera + cfa)
    return path


def save_heic(path: Path, pixels: np.ndarray, orientation: int | None = None) -> Path:
    """A HEIC by pillow-heif (an EXIF orientation becomes the file's rotation, as phones write it)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, format="HEIF", quality=90, exif=exif.tobytes())
    return path


def read_back(paths: list[Path]) -> dict[str, tuple[str | None, str | None]]:
    """``XMP:Rating`` and ``XMP:Label`` of each file, by an independent reader: exiftool, else python-exiv2."""
    if shutil.which("exiftool"):
        out = subprocess.run(["exiftool", "-j", "-XMP:Rating", "-XMP:Label", *map(str, paths)],
                             capture_output=True, text=True, check=False)
        found = {}
        for item in json.loads(out.stdout):
            rating, label = item.get("Rating"), item.get("Label")
            found[Path(item["SourceFile"]).name] = (None if rating is None else str(rating), label)
        return found
    import exiv2

    found = {}
    for path in paths:
        image = exiv2.ImageFactory.open(str(path))
        image.readMetadata()
        data = image.xmpData()
        values = {d.key(): d.toString() for d in data}
        found[path.name] = (values.get("Xmp.xmp.Rating"), values.get("Xmp.xmp.Label"))
    return found


DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
   exif:DateTimeOriginal="2024:05:01 10:00:00.120"
   xmp:Rating="{rating}"
   xmpMM:DerivedFrom="{image}"
   darktable:import_timestamp="63850000000000000"
   darktable:change_timestamp="63850000100000000"
   darktable:xmp_version="5"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="2"
   darktable:iop_order_version="4">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
     <rdf:li>beach</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <darktable:masks_history>
    <rdf:Seq/>
   </darktable:masks_history>
   <darktable:history>
    <rdf:Seq>
     <rdf:li
      darktable:num="0"
      darktable:operation="exposure"
      darktable:enabled="1"
      darktable:modversion="6"
      darktable:params="00000000000080b9cdcc4c3f0000c03f0000803f"
      darktable:multi_name=""
      darktable:multi_priority="0"
      darktable:blendop_version="13"
      darktable:blendop_params="gz11eJxjYGBgkGAAgRNODGiAEV0AJ2iwh+CRyscOAAdeGQQ="/>
     <rdf:li
      darktable:num="1"
      darktable:operation="colorbalancergb"
      darktable:enabled="1"
      darktable:modversion="5"
      darktable:params="9a99993e0000000000000000cdcccc3e"
      darktable:multi_name="&lt;warm&gt; &amp; soft"
      darktable:multi_priority="0"
      darktable:blendop_version="13"
      darktable:blendop_params="gz11eJxjYGBgkGAAgRNODGiAEV0AJ2iwh+CRyscOAAdeGQQ="/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def shared_model(factory: pytest.TempPathFactory) -> Path:
    """One tiny checkpoint (and its ONNX graph, kept beside it) for the whole run, made by the first
    test process that needs it: the pytest-xdist workers share the run's temporary folder."""
    import fcntl

    base = factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "photo-model" / "m.pt"
    path.parent.mkdir(exist_ok=True)
    with open(root / "photo-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            make_checkpoint(path)
    return path


def make_checkpoint(path: Path, size: int = SIZE, seed: int = 0) -> Path:
    """A real uiaa checkpoint of an untrained resnet18 on AVA's 1..10 scale (random weights, fixed
    seed), its ONNX graph exported here so the commands under test start without torch."""
    import torch

    from uiaa_cli.models import networks
    from uiaa_cli.models.graphs import exported_graph

    torch.manual_seed(seed)
    model = networks.build_model("resnet18", 10, "none")
    config = networks.make_config(arch="resnet18", size=size, bins=list(range(1, 11)), kind="gauss-mv",
                                  targets=[f"p_{i}" for i in range(1, 11)], loss="ce")
    networks.save_checkpoint(path, model, config)
    exported_graph(path, note=lambda message: None)
    return path
