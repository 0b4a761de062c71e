"""Image decoding that never surprises, shared by ``cache``, ``train`` and ``predict``.

Importing this module never imports torch (``labels``/``evaluate`` start fast; ``cache`` runs
where torch is absent). ``decode_image`` turns any file Pillow reads, and RAW and HEIC/HEIF photos
(:mod:`uiaa_cli.pixels.photo`, the ``photo`` extra), into ``(size, size, 3)`` uint8 RGB:

- EXIF orientation is applied, a RAW's own flip for RAW files (after the resize: on a square the
  result is the same, and turning a 384 px square is far cheaper than turning the full photo);
- CMYK (through its ICC profile when it has one), greyscale, palette, 16-bit and float images are
  converted to RGB; 16-bit values are scaled to 8 bits, not clipped as Pillow's ``convert`` does;
- transparency (RGBA, LA, palette with a transparent colour) is composited on white, the background
  such images are made to be seen on (web pages, product shots); black would darken every
  anti-aliased edge and turn transparent logos into black squares;
- the picture is warped to a square (no crop) with an antialiased bilinear filter;
- empty, truncated and non-image files and decompression bombs raise ``ImageError`` with a
  one-line reason; Pillow's own warnings never reach the user's terminal.

Decoder, by measurement (benchmarks/bench_cache.py): Pillow decodes, with ``draft()`` for JPEGs
(libjpeg scales by 1/2, 1/4 or 1/8 inside the DCT, never below ``size``: 2.5 ms instead of 4.1 ms
at 224 px from 800x600, mean difference 1 grey level, max 11 on sharp edges). Pillow resizes. torch's
uint8 kernel resizes 2-3x faster (within one grey level) and is used when the process has already
imported torch (``train``; ``predict`` resizes with Pillow for either engine), but it is never imported for it:
importing torch costs 1-4 s and ~600 MB per process, more than the resize saves on all but very long
runs, and ``cache`` must start light and run where torch is absent (docs/ARCHITECTURE.md). torchvision's
decode_jpeg is not used either: its libjpeg prints warnings such as "Corrupt JPEG data: N extraneous
bytes" straight to stderr (common in AVA), and Pillow must still read the header (size, mode, EXIF,
bomb check).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import stat
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from uiaa_cli.errors import UiaaError
from uiaa_cli.pixels import photo

# Refuse images over 150 megapixels (~450 MB once decoded to RGB, per worker): larger than any
# camera short of 200 MP phone modes, and small enough that a few workers cannot exhaust memory.
# Pillow checks this limit while reading the header, before any pixel is decoded.
MAX_PIXELS = int(os.environ.get("UIAA_MAX_PIXELS", 150_000_000))
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

BARE_ID_EXTENSIONS = (".jpg", ".jpeg", ".png")
WHITE = (255, 255, 255)

# Formats Pillow registers but cannot decode here (stubs, or needing Ghostscript / Windows), and
# .h5 would pick up uiaa's own caches.
_NOT_DECODABLE = {"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "EPS"}


class ImageError(UiaaError):
    """An image that cannot be used: missing, unreadable, too large, or outside the image root."""


# ---------------------------------------------------------------------------------- decoding


def decode_image(source: str | os.PathLike | bytes, size: int) -> np.ndarray:
    """The image at ``source`` (a path or the file's bytes) as a new, writable, C-contiguous
    ``(size, size, 3)`` uint8 RGB array.

    Raises ImageError with a one-line reason for anything that is not a usable image.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    where = None if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" and friends: noise, not errors
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(source, size)
    except ImageError as e:
        if e.where is None:
            e.where = where
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refused as a possible decompression bomb: {_first_line(e)}", where=where) from None
    except UnidentifiedImageError:
        raise ImageError("not an image (or a format Pillow cannot read)", where=where) from None
    except FileNotFoundError:
        raise ImageError("no such file", where=where) from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image", where=where) from None
    except MemoryError:
        raise ImageError("out of memory decoding this image", where=where) from None
    except OSError as e:
        reason = _first_line(e)
        if "truncated" in reason or "broken data stream" in reason or "premature end" in reason.lower():
            raise ImageError(f"truncated or corrupt image ({reason})", where=where) from None
        raise ImageError(f"unreadable image ({reason})", where=where) from None
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many types on corrupt input
        raise ImageError(f"corrupt image ({type(e).__name__}: {_first_line(e)})", where=where) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _decode(source: str | os.PathLike | bytes, size: int) -> np.ndarray:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageError("empty data (0 bytes)")
        fp: io.BytesIO | str = io.BytesIO(bytes(source))
    else:
        fp = os.fspath(source)
        info = os.stat(fp)  # FileNotFoundError: "no such file"
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(fp)
        if not stat.S_ISREG(info.st_mode):  # opening a named pipe would wait for a writer forever
            raise ImageError("not a regular file (a named pipe, socket or device)")
        if info.st_size == 0:
            raise ImageError("empty file (0 bytes)")
    with _open(fp, source, size) as (im, orientation):
        if im.width < 1 or im.height < 1:
            raise ImageError(f"empty picture ({im.width}x{im.height})")
        if im.format == "JPEG":
            im.draft(None, (size, size))  # DCT scaling, never below size in either dimension
        orientation = orientation or _orientation(im)
        im.load()
        pixels = _resize(_to_rgb(im), size)
    return _ORIENT[orientation](pixels) if orientation in _ORIENT else pixels


@contextlib.contextmanager
def _open(fp: io.BytesIO | str, source: Any, size: int) -> Iterator[tuple[Image.Image, int | None]]:
    """The picture, unread, and its orientation when the format says it elsewhere than in EXIF (a
    RAW's flip); RAW and HEIF files through :mod:`uiaa_cli.pixels.photo`."""
    try:
        if isinstance(fp, str) and photo.is_raw(fp):
            im, orientation = photo.open_raw(fp, size, MAX_PIXELS)
            with im:
                yield im, orientation
            return
        heif = photo.is_heif(fp) if isinstance(fp, str) else photo.looks_heif(bytes(source[:16]))
        if heif:
            photo.register_heif()
    except photo.PhotoError as e:
        raise ImageError(str(e)) from None
    with Image.open(fp) as im:
        yield im, None


def _resize(im: Image.Image, size: int) -> np.ndarray:
    """Warp to ``size`` x ``size``, antialiased bilinear: Pillow's, or torch's uint8 kernel when this
    process has torch loaded already.

    torch's SIMD kernel reproduces Pillow's filter within one grey level, 2-3x faster, and writes
    straight into a channels-last buffer, so the (S, S, 3) result needs no transposing copy.
    """
    torch = _torch()
    if torch is None:
        return np.array(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)  # writable
    pixels = torch.from_numpy(np.asarray(im, dtype=np.uint8)).permute(2, 0, 1)[None]  # read-only: never written
    out = torch.empty((1, size, size, 3), dtype=torch.uint8)
    try:
        # torchvision's resize calls this same kernel; ``out`` in channels-last is the HWC array.
        torch._C._nn._upsample_bilinear2d_aa(pixels, [size, size], False, out=out.permute(0, 3, 1, 2))
        return out[0].numpy()
    except (AttributeError, TypeError, RuntimeError):  # a torch without the private entry point
        resized = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True,
                                                  align_corners=False)
        return np.ascontiguousarray(resized[0].permute(1, 2, 0).numpy())


_PILLOW_ONLY = False  # set by resize_without_torch


def _torch() -> Any:
    """torch if this process has already imported it (never imported here), unless it resizes with
    Pillow only (``resize_without_torch``, or UIAA_RESIZE=pillow)."""
    if _PILLOW_ONLY or os.environ.get("UIAA_RESIZE", "").lower() == "pillow":
        return None
    return sys.modules.get("torch")


def resize_without_torch() -> None:
    """Resize with Pillow from now on in this process and the workers it forks: ``predict`` gives
    the same pixels to either engine, and its ONNX path never imports torch (start-up)."""
    global _PILLOW_ONLY
    _PILLOW_ONLY = True


def init_worker() -> None:
    """Set up a decoding worker process: one thread each (parallelism comes from the processes)."""
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(1)


def preload() -> None:
    """Load Pillow's common format plugins (JPEG, PNG, BMP, GIF, PPM) in a parent before it forks
    workers, so they share them; the rest load on first need (all of them cost 0.12 s of CPU)."""
    Image.preinit()


# EXIF orientation (tag 0x0112) to the numpy view that undoes it, as Pillow's exif_transpose.
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: np.ascontiguousarray(a[:, ::-1]),
    3: lambda a: np.ascontiguousarray(a[::-1, ::-1]),
    4: lambda a: np.ascontiguousarray(a[::-1]),
    5: lambda a: np.ascontiguousarray(a.swapaxes(0, 1)),
    6: lambda a: np.ascontiguousarray(np.rot90(a, -1)),
    7: lambda a: np.ascontiguousarray(a[::-1, ::-1].swapaxes(0, 1)),
    8: lambda a: np.ascontiguousarray(np.rot90(a, 1)),
}


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)  # ExifTags.Base.Orientation
        return int(value) if value in _ORIENT else 1
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not lose a good picture
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as an 8-bit RGB image."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: scale 0..65535 to 0..255 (Pillow's convert would clip at 255).
        grey = np.clip(np.rint(np.asarray(im).astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0  # 0..1 floats or 0..255
        grey = np.clip(np.nan_to_num(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageError(f"unsupported colour mode {mode}") from None


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK through the image's ICC profile when it has one (press profiles differ a lot)."""
    profile = im.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile: fall back to the plain formula
            pass
    return im.convert("RGB")


# ---------------------------------------------------------------------------------- finding


def image_table(path: str, images: str | os.PathLike | None) -> tuple[Any, Path]:
    """A labels table naming images, and the folder they are found in (default: the table's folder).

    A folder where none of the images is found (a wrong or missing ``--images``) is one error here,
    before any work, not one "no such image" line per image.
    """
    from uiaa_cli.errors import at
    from uiaa_cli.tables.table import read_table

    table = read_table(path)
    if "image" not in table:
        raise UiaaError("no 'image' column: not a uiaa labels table", where=at(str(path)))
    root = Path(images) if images is not None else Path(path).resolve().parent
    if not root.is_dir():
        raise UiaaError("no such folder of images (give it with --images)", where=at(str(root)))
    names = table["image"].astype(str)
    if len(names) and not any_resolves(root, names):
        shown = ", ".join(repr(str(n)) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        raise UiaaError(f"none of the {len(names):,} images named in {path} is in this folder ({shown}); "
                        "give the folder of the images with --images", where=at(str(root)))
    return table, root


def any_resolves(root: str | os.PathLike, names: np.ndarray, sample: int = 16) -> bool:
    """Whether at least one of ``names`` is an image file under ``root``: a few names spread over the
    table first (the usual answer, in microseconds), then, only if none of those is, every name."""
    picks = np.unique(np.linspace(0, len(names) - 1, min(sample, len(names))).astype(int))
    rest = np.setdiff1d(np.arange(len(names)), picks)
    for i in np.concatenate((picks, rest)):
        try:
            resolve_image(root, names[i])
            return True
        except ImageError:
            continue
    return False


def resolve_image(root: str | os.PathLike, name: str) -> Path:
    """The file that ``name`` (a value of the labels' image column) names under ``root``.

    ``name`` is relative to ``root``; if it is not a file as given, ``name.jpg``, ``name.jpeg`` and
    ``name.png`` are tried (bare ids such as AVA's). Absolute names, ``..`` and symlinks leading
    outside ``root`` are refused, as are missing files and anything that is not a regular file.
    """
    name = str(name)
    if not name.strip() or "\x00" in name:
        raise ImageError("empty or invalid image name", where=repr(name))
    if os.path.isabs(name) or name.startswith("~"):
        raise ImageError("absolute path refused: image names must be relative to the image root", where=name)
    normal = os.path.normpath(name)
    if normal == os.pardir or normal.startswith(os.pardir + os.sep):
        raise ImageError("path escapes the image root", where=name)
    real_root = os.path.realpath(root)
    extension = os.path.splitext(name)[1].lower()
    # (the common extensions first: the full list loads every Pillow plugin, 0.12 s of CPU)
    has_extension = extension in BARE_ID_EXTENSIONS or (bool(extension) and extension in readable_extensions())
    candidates = [name] + ([] if has_extension else [name + ext for ext in BARE_ID_EXTENSIONS])
    for candidate in candidates:
        path = os.path.join(real_root, candidate)
        if not os.path.lexists(path):
            continue
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise ImageError("resolves outside the image root (through a symlink)", where=name)
        if not os.path.exists(real):
            raise ImageError("broken symlink", where=name)
        if not os.path.isfile(real):
            raise ImageError("not a regular file", where=name)
        return Path(real)
    tried = f" (also tried {', '.join(candidates[1:])})" if len(candidates) > 1 else ""
    raise ImageError(f"no such image under {root}{tried}", where=name)


@functools.lru_cache(maxsize=1)
def readable_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of every format Pillow can decode here, and RAW and HEIF."""
    Image.init()
    # RAW and HEIF whether or not the photo extra is installed: without it, each is one line naming
    # the extra, never a file silently left out of a folder.
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN and fmt not in _NOT_DECODABLE) | photo.PHOTO_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder``, recursively, sorted; hidden files and folders are skipped.

    Image files are recognised by extension (any format Pillow reads, RAW and HEIF), case-insensitively.
    """
    return [Path(p) for p in iter_images(folder)]


def iter_images(folder: str | os.PathLike) -> Iterator[str]:
    """The paths of :func:`list_images`, one at a time, in the same order (``sorted`` on ``Path``s:
    component by component), holding one folder's listing per level, never the whole tree.

    Only regular files (and symlinks to them) are images: a named pipe, socket or device named
    ``x.jpg`` is skipped (opening a pipe would wait forever). Symlinked folders are not followed
    (no loops), as ``os.walk`` does by default.
    """
    top = os.fspath(folder)
    if not os.path.isdir(top):
        raise ImageError("not a folder", where=str(folder))
    extensions = readable_extensions()

    def walk(path: str) -> Iterator[str]:
        try:
            with os.scandir(path) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:  # an unreadable folder: nothing to list (as os.walk)
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from walk(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in extensions and entry.is_file():
                    yield entry.path
            except OSError:
                continue

    return walk(str(Path(top)))  # "photos/" -> "photos", as Path joins it
