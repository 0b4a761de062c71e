"""XMP ratings and labels, read and written where Lightroom, Capture One, darktable and digiKam look.

- Sidecars: ``IMG_0001.CR2.xmp`` (``ext``: darktable, digiKam) or ``IMG_0001.xmp`` (``base``:
  Lightroom Classic, Capture One); or the XMP embedded in a JPEG, on request.
- Reading and writing go through python-exiv2 (libexiv2 and Adobe's XMP toolkit: what darktable and
  digiKam are built on), never through string edits of our own.
- A sidecar is merged, never replaced: the existing file is copied to a temporary name beside it,
  exiv2 changes only the keys given, and before the copy is renamed over the original
  (:func:`uiaa_cli.tables.outputs.atomic_output`: never half-written, a crash leaves the old file)
  :func:`check_merge` parses the old and the new XMP and refuses the write unless every property
  other than those keys is the same after the parse (values, structures, darktable's history).
- uiaa parses XMP itself only for that check and for the safety check before exiv2 reads a sidecar,
  always with defusedxml: a sidecar declaring entities (a "billion laughs") is refused.
- uiaa records what it wrote in a namespace of its own (:data:`NAMESPACE`, prefix ``uiaa``):
  ``uiaa:Rating`` and ``uiaa:Label`` are the values it last wrote, so a later run tells its own
  ratings from the photographer's (a rating that differs from ``uiaa:Rating`` was set by hand).
"""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path
from typing import Any

from uiaa_cli.errors import UiaaError, at

NAMESPACE = "http://uiaa.invalid/ns/xmp/1.0/"  # an XMP namespace is a name, never fetched (.invalid: no one's)
PREFIX = "uiaa"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMP = "http://ns.adobe.com/xap/1.0/"
SIDECAR_STYLES = ("ext", "base")
EMBEDDABLE = (".jpg", ".jpeg")  # exiv2 rewrites them safely; RAW and HEIC files are never written
LABELS = ("Red", "Yellow", "Green", "Blue", "Purple")

# The keys uiaa reads; Exif.Image.Rating is the rating a camera writes into the file itself.
RATING, LABEL = "Xmp.xmp.Rating", "Xmp.xmp.Label"
OWN = {name: f"Xmp.{PREFIX}.{name}" for name in ("Rating", "Label", "Score", "Stars", "Group", "Pick", "Model")}
CAMERA_RATING = "Exif.Image.Rating"

_exiv2: Any = None


def exiv2_module() -> Any:
    """python-exiv2, set up once: quiet (its warnings are not the user's business) and knowing uiaa's
    namespace; without it, one error naming the extra."""
    global _exiv2
    if _exiv2 is None:
        try:
            import exiv2
        except ImportError:
            from uiaa_cli.pixels.photo import EXTRA

            raise UiaaError(f"reading and writing XMP needs the photo extra ({EXTRA})") from None
        exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.mute)
        exiv2.XmpProperties.registerNs(NAMESPACE, PREFIX)
        _exiv2 = exiv2
    return _exiv2


def sidecar_path(image: str | os.PathLike, style: str = "ext") -> Path:
    """``IMG.CR2.xmp`` (``ext``) or ``IMG.xmp`` (``base``) beside ``image``."""
    image = Path(image)
    if style == "ext":
        return image.with_name(image.name + ".xmp")
    if style == "base":
        return image.with_suffix(".xmp")
    raise ValueError(f"unknown sidecar style {style!r}; choose one of {', '.join(SIDECAR_STYLES)}")


def existing_sidecar(image: str | os.PathLike) -> Path | None:
    """The sidecar an app would read for ``image``: ``IMG.CR2.xmp``, else ``IMG.xmp``, else None."""
    for style in SIDECAR_STYLES:
        path = sidecar_path(image, style)
        if path.is_file():
            return path
    return None


# ------------------------------------------------------------------------------------ reading


def read_values(path: str | os.PathLike) -> dict[str, str]:
    """The rating, label and uiaa's own keys of a sidecar or of an image's embedded metadata (and a
    camera's EXIF rating), as strings; a key that is absent is left out. An unreadable file is a
    UiaaError naming it."""
    exiv2 = exiv2_module()
    path = str(path)
    if path.lower().endswith(".xmp"):
        check_safe(Path(path).read_bytes(), path)
    image = _open(path)
    xmp = image.xmpData()
    out = {}
    for key in (RATING, LABEL, *OWN.values()):
        found = xmp.findKey(exiv2.XmpKey(key))
        if found != xmp.end():
            out[key] = str(found.toString()).strip()
    if not path.lower().endswith(".xmp"):
        exif = image.exifData()
        found = exif.findKey(exiv2.ExifKey(CAMERA_RATING))
        if found != exif.end():
            out[CAMERA_RATING] = str(found.toString()).strip()
    return out


def _open(path: str) -> Any:
    exiv2 = exiv2_module()
    try:
        image = exiv2.ImageFactory.open(path)
        image.readMetadata()
    except exiv2.Exiv2Error as e:
        raise UiaaError(f"cannot read its metadata ({_reason(e)})", where=at(path)) from None
    return image


def catalogue_ratings(folder: str | os.PathLike) -> tuple[list[str], list[int | None], list[tuple[str, str]]]:
    """Every photo's rating under ``folder`` (recursively; hidden entries skipped): names relative
    to ``folder``, ratings (None: no rating at all), and (name, why) for files that cannot be read.

    A photo's rating is its sidecar's (``IMG.CR2.xmp``, else ``IMG.xmp``), as darktable, digiKam
    and Lightroom read it, else the XMP embedded in it, else a camera's EXIF rating. A sidecar
    without its photo (a folder of sidecars alone) stands for the photo it names: ``IMG.CR2.xmp``
    for ``IMG.CR2``, ``IMG.xmp`` for ``IMG``.
    """
    from uiaa_cli.pixels.images import iter_images

    top = Path(folder)
    photos = [Path(p) for p in iter_images(top)]
    used: set[Path] = set()
    names: list[str] = []
    ratings: list[int | None] = []
    failed: list[tuple[str, str]] = []

    def add(name: str, *sources: Path) -> None:
        value = None
        try:
            for source in sources:
                values = read_values(source)
                value = rating_value(values.get(RATING, values.get(CAMERA_RATING)))
                if value is not None:
                    break
        except UiaaError as e:
            failed.append((name, e.message))
            return
        names.append(name)
        ratings.append(value)

    for photo in photos:
        sidecar = existing_sidecar(photo)
        if sidecar is not None:
            used.add(sidecar)
        add(photo.relative_to(top).as_posix(), *([sidecar] if sidecar else []), photo)
    for sidecar in sorted(_sidecars(top)):
        if sidecar not in used:
            add(sidecar.relative_to(top).with_suffix("").as_posix(), sidecar)
    return names, ratings, failed


def _sidecars(top: Path) -> list[Path]:
    out = []
    for folder, subfolders, files in os.walk(top):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        out += [Path(folder) / f for f in files if f.lower().endswith(".xmp") and not f.startswith(".")]
    return out


def rating_value(text: str | None) -> int | None:
    """``xmp:Rating`` as a whole number (-1 rejected, 0 unrated, 1..5 stars); None if absent or not a rating."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value == int(value) and -1 <= value <= 5 else None


# ------------------------------------------------------------------------------------ writing


def update(target: str | os.PathLike, changes: dict[str, str | None]) -> None:
    """Set (a string) or remove (None) each key of ``changes`` in the sidecar or JPEG ``target``,
    merging into what is there; atomic, checked by :func:`check_merge`. A sidecar that does not
    exist yet is made."""
    from uiaa_cli.tables.outputs import atomic_output

    exiv2 = exiv2_module()
    target = Path(target)
    sidecar = target.suffix.lower() == ".xmp"
    exists = target.exists()
    if exists and sidecar:
        check_safe(target.read_bytes(), str(target))
    with atomic_output(target) as tmp:
        if exists:
            shutil.copyfile(target, tmp)
            shutil.copymode(target, tmp)
        try:
            image = exiv2.ImageFactory.open(str(tmp)) if exists else exiv2.ImageFactory.create(exiv2.ImageType.xmp,
                                                                                               str(tmp))
            image.readMetadata()
            before = image.xmpPacket() if exists else ""
            if before:
                check_safe(before.encode("utf-8"), str(target))
            data = image.xmpData()
            for key, value in changes.items():
                found = data.findKey(exiv2.XmpKey(key))
                if found != data.end():
                    data.erase(found)
                if value is not None:
                    data[key] = value
            image.writeMetadata()
            after = _open(str(tmp)).xmpPacket()
        except exiv2.Exiv2Error as e:
            raise UiaaError(f"cannot write its XMP ({_reason(e)})", where=at(str(target))) from None
        check_merge(before, after, str(target))


def check_safe(data: bytes, where: str) -> None:
    """Refuse XMP that is not well-formed XML or that declares entities or a DTD (defusedxml)."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    if not data.strip(b"\x00 \t\r\n"):
        return  # an empty packet: nothing to keep
    try:
        fromstring(data, forbid_dtd=True)
    except DefusedXmlException as e:
        raise UiaaError(f"refused: the XMP declares entities or a DTD ({type(e).__name__})", where=at(where)) from None
    except ParseError as e:
        raise UiaaError(f"not well-formed XMP ({e}); left as it is", where=at(where)) from None


def check_merge(before: str, after: str, where: str) -> None:
    """Every property of ``before`` other than xmp:Rating, xmp:Label and uiaa's own is in ``after``,
    the same after a parse (nothing else added or lost); else a UiaaError, and nothing is renamed."""
    old, new = properties(before), properties(after)
    lost, added = old - new, new - old
    if lost or added:
        change = next(iter(lost or added))
        what = "would lose" if lost else "would add"
        raise UiaaError(f"the merge {what} {change[0]} (and {len(lost) + len(added) - 1} more changes): "
                        "left as it is", where=at(where))


def properties(packet: str) -> collections.Counter:
    """The XMP properties of ``packet`` but those uiaa writes, as ``(name, normalised value)``,
    independent of prefixes, of the order of attributes, of whitespace and of the RDF forms exiv2
    may choose (a simple property as an attribute or as an element; one rdf:Description or several).
    The order of items in an array (darktable's history) counts."""
    from defusedxml.ElementTree import fromstring

    out: collections.Counter = collections.Counter()
    if not packet.strip():
        return out
    root = fromstring(packet.encode("utf-8"), forbid_dtd=True)
    for rdf in root.iter(f"{{{RDF}}}RDF"):
        for description in rdf.findall(f"{{{RDF}}}Description"):
            simple, nested = _fields(description)
            for name, value in [*simple, *nested]:
                if not _ours(name):
                    out[(name, value)] += 1
    return out


def _fields(element: Any) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """An element's simple fields (attributes, and children with no children or attributes, which
    are the same property in element form) and its other children, each as ``(name, value)``."""
    simple = [(name, value) for name, value in element.attrib.items()
              if name not in (f"{{{RDF}}}about", f"{{{RDF}}}parseType")]
    nested = []
    for child in element:
        if not len(child) and not child.attrib:
            simple.append((child.tag, (child.text or "").strip()))
        else:
            nested.append((child.tag, _tree(child)))
    return simple, nested


def _tree(element: Any) -> tuple:
    """A nested value: its simple fields in any order, its children in order, its text."""
    simple, nested = _fields(element)
    return tuple(sorted(simple)), tuple(nested), (element.text or "").strip()


def _ours(name: str) -> bool:
    return name in (f"{{{XMP}}}Rating", f"{{{XMP}}}Label") or name.startswith(f"{{{NAMESPACE}}}")


def _reason(e: BaseException) -> str:
    # exiv2's errors carry (code, message)
    text = str(e.args[-1] if e.args and isinstance(e.args[-1], str) else e).strip()
    return text.splitlines()[0] if text else type(e).__name__
