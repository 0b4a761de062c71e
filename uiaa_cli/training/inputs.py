"""What ``train`` checks before it imports torch (1-7 s): the data is a readable labels table or a
finished cache, the folder of its images resolves, and no more than ``--max-missing`` of the images
it names are missing, so a typo or a half-copied folder is one line at once, not after torch loads.

"Missing" is the images the training cannot have: for a labels table, those not found under
``--images`` (found but unreadable ones are only known when decoded, and are left out then, one
line each); for a cache, those ``uiaa cache`` could not decode when it built the cache (its
``skipped`` table). Imports neither torch nor the training modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uiaa_cli.errors import ExitStatus, UiaaError, at

MAX_MISSING = 0.05  # the default share of missing images a run accepts
SHOWN = 5  # missing names shown in the refusal


@dataclass
class DataInput:
    """One data file as checked: its table (and images folder), and the images it names but lacks."""

    path: str
    images: str | None  # --images as given (compared on --resume)
    cache: bool
    table: Any = None  # the labels table (a cache's is read again when it opens)
    root: Path | None = None  # the folder of a table's images
    named: int = 0  # images the data names (a cache: those stored and those its build skipped)
    missing: list[str] = field(default_factory=list)

    def note(self) -> str:
        """``"; N of the M images named in PATH are missing (left out)"`` for the headline, or ""."""
        if not self.missing:
            return ""
        return f"; {len(self.missing):,} of the {self.named:,} images named in {self.path} are missing (left out)"


@dataclass
class Inputs:
    """The checked training data and ``--val`` (None without it), for the settings they were checked with."""

    data: DataInput
    val: DataInput | None
    max_missing: float

    def note(self) -> str:
        """What the headline adds about missing images ("" when none are)."""
        return self.data.note() + (self.val.note() if self.val else "")

    def fits(self, data: str | None, images: str | None, val: str | None, max_missing: float) -> bool:
        """Whether these were checked for these settings (a resumed run may name other paths)."""
        return (self.data.path, self.data.images, self.val.path if self.val else None, self.max_missing) \
            == (data, images, val, max_missing)


def check_inputs(data: str, images: str | None, val: str | None, max_missing: float = MAX_MISSING) -> Inputs:
    """Check DATA (and ``--val``) as the run will read them; a share of missing images above
    ``max_missing`` is refused with exit status 1, naming the counts and the first missing images."""
    if not (isinstance(max_missing, (int, float)) and math.isfinite(max_missing) and 0 <= max_missing <= 1):
        raise UiaaError(f"--max-missing must lie in [0, 1], got {max_missing}")
    checked = Inputs(check_data(data, images, max_missing), None, max_missing)
    if val:
        checked.val = check_data(val, images, max_missing, " (--val)")
    return checked


def check_data(path: str, images: str | None, max_missing: float, role: str = "") -> DataInput:
    """One data file: a finished cache, or a labels table whose images are looked up under ``images``."""
    from uiaa_cli.pixels.cache import CacheReader, is_cache

    if is_cache(path):
        with CacheReader(path) as reader:
            found = DataInput(path, images, True, named=len(reader) + len(reader.skipped),
                              missing=[name for name, _ in reader.skipped])
        where = "could not be decoded when the cache was built (its 'skipped' table)"
        hint = "rebuild the cache from the complete images"
    else:
        from uiaa_cli.pixels.images import image_table

        table, root = image_table(path, images)  # none found at all: a wrong folder, exit 2
        found = DataInput(path, images, False, table, root, len(table), missing_images(root, table["image"]))
        where = f"cannot be found under {root}"
        hint = "give the folder that holds them with --images"
    share = len(found.missing) / max(found.named, 1)
    if share > max_missing:
        shown = ", ".join(repr(n) for n in found.missing[:SHOWN]) + (", ..." if len(found.missing) > SHOWN else "")
        raise UiaaError(f"{len(found.missing):,} of the {found.named:,} images named{role} ({share:.0%}) {where}, "
                        f"more than --max-missing {max_missing:g} allows: {shown}; {hint}, or pass --max-missing "
                        f"1 to train on the {found.named - len(found.missing):,} there", where=at(path),
                        status=ExitStatus.INCOMPLETE)
    return found


def missing_images(root: Path, names: Any) -> list[str]:
    """The names (in table order) that do not resolve to an image file under ``root``."""
    from uiaa_cli.pixels.images import ImageError, resolve_image

    missing = []
    for name in names:
        try:
            resolve_image(root, str(name))
        except ImageError:
            missing.append(str(name))
    return missing
