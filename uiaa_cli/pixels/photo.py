"""What cameras and phones write: RAW files (rawpy, i.e. LibRaw) and HEIC/HEIF (pillow-heif).

Both libraries are the optional extra ``uiaa[photo]`` and are imported only when such a file is met,
so a folder of JPEGs never pays for them. Without the extra, a RAW or HEIC file is one line naming
the extra (:data:`EXTRA`), never silently skipped: the folder walk lists these extensions whether
or not the extra is installed.

RAW: the embedded JPEG preview is used when LibRaw finds one at least as large as the model's
input on its short side. It is what the camera's screen and every culling tool (Photo Mechanic,
Lightroom's import, darktable's lighttable) show, it holds the camera's own rendering, and it
costs a JPEG decode (with Pillow's ``draft``, a fraction of one). Only a file without such a
preview is demosaiced, at half size (each 2 x 2 Bayer cell one pixel: no interpolation, 4x fewer
pixels, still far above any model's input), with the camera's white balance. The orientation is the
RAW's own flip (the preview's EXIF, if it has one, is not trusted: some cameras leave it at 1).

HEIF: pillow-heif registers itself with Pillow; libheif applies the file's rotation and mirror
(``irot``/``imir``) as it decodes and pillow-heif then sets the EXIF orientation to 1, so nothing is
turned twice. AVIF is Pillow's own (Pillow >= 11.2 reads it).

RAW members of WebDataset shards are not decoded (a RAW is recognised by its extension, and a
shard member reaches the decoder as bytes without one).
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image

EXTRA = "pip install 'uiaa[photo]'"

# LibRaw reads many more; these are the ones cameras of the last twenty years write.
RAW_EXTENSIONS = frozenset({
    ".3fr", ".ari", ".arw", ".bay", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".fff", ".iiq",
    ".k25", ".kdc", ".mef", ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".raw", ".rw2",
    ".rwl", ".sr2", ".srf", ".srw", ".x3f",
})
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
PHOTO_EXTENSIONS = RAW_EXTENSIONS | HEIF_EXTENSIONS

# LibRaw's flip (dcraw's) to the EXIF orientation that undoes it: "12435867"[flip] in dcraw.
_FLIP_TO_EXIF = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}
# HEIF brands (bytes 8..12 of an ISO base media file), for shard members that come without a name.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}

_heif_registered = False


class PhotoError(Exception):
    """A RAW or HEIF file that cannot be read; ``images`` turns it into an ImageError."""


def extension(path: str | os.PathLike) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def is_raw(path: str | os.PathLike) -> bool:
    return extension(path) in RAW_EXTENSIONS


def is_heif(path: str | os.PathLike) -> bool:
    return extension(path) in HEIF_EXTENSIONS


def looks_heif(data: bytes) -> bool:
    """Whether ``data`` starts as a HEIF file does (an ``ftyp`` box with a HEIF brand)."""
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def register_heif() -> None:
    """Let Pillow open HEIC/HEIF (once per process); without pillow-heif, a PhotoError naming the extra."""
    global _heif_registered
    if _heif_registered:
        return
    try:
        import pillow_heif
    except ImportError:
        raise PhotoError(f"a HEIC/HEIF photo: reading it needs the photo extra ({EXTRA})") from None
    pillow_heif.register_heif_opener()
    _heif_registered = True


def open_raw(source: str | bytes, size: int, max_pixels: int) -> tuple[Image.Image, int]:
    """A RAW file as a Pillow image (its preview, not yet decoded, or the half-size demosaic) and
    the EXIF orientation that turns it upright."""
    try:
        import rawpy
    except ImportError:
        raise PhotoError(f"a RAW file: reading it needs the photo extra ({EXTRA})") from None
    fp: Any = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    try:
        raw = rawpy.imread(fp)
    except (rawpy.LibRawError, rawpy.NotSupportedError) as e:
        raise PhotoError(f"not a RAW file LibRaw can read ({_reason(e)})") from None
    with raw:
        orientation = _FLIP_TO_EXIF.get(int(raw.sizes.flip), 1)
        preview = _preview(raw, size)
        if preview is not None:
            return preview, orientation
        sizes = raw.sizes
        if sizes.raw_width * sizes.raw_height > max_pixels:
            raise PhotoError(f"refused as a possible decompression bomb: {sizes.raw_width}x{sizes.raw_height} "
                             f"pixels, more than {max_pixels:,}")
        try:
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)
        except (rawpy.LibRawError, rawpy.NotSupportedError) as e:
            raise PhotoError(f"corrupt RAW data, and no preview to fall back on ({_reason(e)})") from None
    return Image.fromarray(rgb), orientation


def _preview(raw: Any, size: int) -> Image.Image | None:
    """The embedded preview LibRaw picks (the largest), if it is at least ``size`` on its short side."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawError, rawpy.NotSupportedError):  # none, an unsupported kind, or a corrupt one
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            image = Image.open(io.BytesIO(thumb.data))
        else:  # an uncompressed bitmap (h, w, 3)
            image = Image.fromarray(thumb.data)
    except Exception:  # noqa: BLE001 - a broken preview: demosaic instead
        return None
    if min(image.size) < size:
        image.close()
        return None
    return image


def _reason(e: BaseException) -> str:
    first = e.args[0] if e.args else ""
    text = (first.decode("utf-8", "replace") if isinstance(first, bytes) else str(e)).strip()  # LibRaw's are bytes
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------ capture time


def capture_time(path: str | os.PathLike) -> float | None:
    """When the shot was taken, in seconds (EXIF ``DateTimeOriginal`` plus its sub-second field),
    comparable between shots of one camera; None when the file does not say.

    Pillow reads it from JPEG, TIFF, PNG, WebP and (with the extra) HEIF; RAW files through exiv2.
    """
    path = os.fspath(path)
    try:
        if is_raw(path):
            return _exiv2_time(path)
        if is_heif(path):
            register_heif()
        with Image.open(path) as im:
            exif = im.getexif()
            photo = exif.get_ifd(0x8769)  # the Exif IFD
            stamp = photo.get(0x9003) or exif.get(0x9003) or exif.get(0x0132)  # DateTimeOriginal, DateTime
            sub = photo.get(0x9291) or photo.get(0x9290)  # SubSecTimeOriginal, SubSecTime
        return parse_exif_time(stamp, sub)
    except Exception:  # noqa: BLE001 - no time is an answer; an unreadable file fails elsewhere
        return None


def _exiv2_time(path: str) -> float | None:
    from uiaa_cli.catalogue.xmp import exiv2_module

    exiv2 = exiv2_module()
    image = exiv2.ImageFactory.open(path)
    image.readMetadata()
    exif = image.exifData()
    values = {}
    for key in ("Exif.Photo.DateTimeOriginal", "Exif.Image.DateTimeOriginal", "Exif.Image.DateTime",
                "Exif.Photo.SubSecTimeOriginal", "Exif.Image.SubSecTimeOriginal"):
        found = exif.findKey(exiv2.ExifKey(key))
        if found != exif.end():
            values[key] = found.toString()
    stamp = (values.get("Exif.Photo.DateTimeOriginal") or values.get("Exif.Image.DateTimeOriginal")
             or values.get("Exif.Image.DateTime"))
    return parse_exif_time(stamp, values.get("Exif.Photo.SubSecTimeOriginal")
                           or values.get("Exif.Image.SubSecTimeOriginal"))


def parse_exif_time(stamp: Any, subsec: Any = None) -> float | None:
    """``2024:05:01 10:00:00`` (EXIF's form) and ``120`` (sub-second digits) as seconds; None if unreadable."""
    import calendar
    import time

    if isinstance(stamp, bytes):
        stamp = stamp.decode("ascii", "replace")
    if not stamp:
        return None
    try:
        seconds = float(calendar.timegm(time.strptime(str(stamp).strip()[:19], "%Y:%m:%d %H:%M:%S")))
    except ValueError:
        return None
    digits = "".join(ch for ch in str(subsec or "").strip() if ch.isdigit())
    return seconds + (float(f"0.{digits}") if digits else 0.0)
