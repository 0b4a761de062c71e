"""``uiaa rate``: scores to stars and labels in a photographer's catalogue.

1. Scores: a predictions table (``image``, ``score``), or the photos themselves scored by
   ``predict`` (:func:`uiaa_cli.predict.pipeline.run_predict`, which names each file it cannot read).
2. Shots: a RAW and a JPEG (or HEIC) of the same name in one folder are one shot, rated once from
   the RAW (the master the photographer develops; its preview and the JPEG are the same picture),
   and both files get that shot's rating.
3. Stars by rank or cut-offs (:mod:`uiaa_cli.catalogue.stars`); with ``--cull``, groups and picks
   (:mod:`uiaa_cli.catalogue.culling`): each pick labelled Green (``--pick label``) or one star
   more when its group has alternates (``--pick bump``).
4. Where each rating goes (:mod:`uiaa_cli.catalogue.xmp`): the sidecar ``IMG.CR2.xmp`` (``ext``)
   or ``IMG.xmp`` (``base``), or the JPEG itself (``--embed``; other formats get a sidecar).
   With ``base``, a RAW and a JPEG of one shot share ``IMG.xmp``: it is written once, with the
   shot's rating (Lightroom treats the JPEG as the RAW's companion file in the same way).
5. A rating the photographer set (one that differs from what uiaa last wrote, ``uiaa:Rating``, or
   a camera's rating when no sidecar exists yet) is never changed, neither up nor down, unless
   ``--overwrite``; a label likewise. uiaa never writes 0 (unrated) or -1 (rejected).
6. The plan is a table (``image, score, group, pick, stars, rating_before, rating, label_before,
   label, xmp, action``); ``--dry-run`` stops there, otherwise each sidecar that changes is merged
   and written atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from uiaa_cli.catalogue import culling, xmp
from uiaa_cli.catalogue.stars import StarRule, stars
from uiaa_cli.errors import UiaaError, at
from uiaa_cli.pixels.photo import is_raw
from uiaa_cli.tables.table import Table

PICK_MODES = ("label", "bump")
PICK_LABEL = "Green"


@dataclass
class RateSettings:
    stars: StarRule
    sidecar: str = "ext"
    embed: bool = False
    overwrite: bool = False
    cull: bool = False
    grouping: str = "both"
    gap: float = culling.BURST_GAP
    max_distance: int = culling.BURST_DISTANCE
    min_similarity: float = culling.BURST_SIMILARITY
    blur_ratio: float = culling.BLUR_RATIO
    pick: str = "label"
    workers: int | None = None


@dataclass
class RateReport:
    photos: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (photo or sidecar, why)
    written: int = 0
    created: int = 0
    unchanged: int = 0
    kept_ratings: int = 0
    kept_labels: int = 0
    shared: int = 0
    groups: int = 0
    bursts: int = 0
    predict_failed: int = 0


# ------------------------------------------------------------------------------------ scores


def is_predictions(path: str) -> bool:
    """A table with ``image`` and ``score`` columns (``uiaa predict -o``'s)."""
    from uiaa_cli.predict.inputs import input_kind, table_columns

    if input_kind(path) != "table":
        return False
    columns = table_columns(path)
    return "image" in columns and "score" in columns


def read_predictions(path: str, images: str | None) -> tuple[list[str], np.ndarray, str]:
    """Photo paths (a relative name under ``images``, default the current folder), scores, model."""
    from uiaa_cli.tables.table import read_table

    table = read_table(path)
    scores = np.asarray(table["score"], dtype=np.float64)
    names = table["image"].astype(str).tolist()
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise UiaaError(f"image {names[bad[0]]}: its score is not a finite number", where=at(path))
    paths = [name if images is None or os.path.isabs(name) else os.path.join(images, name) for name in names]
    if paths and not any(os.path.exists(p) for p in paths):
        raise UiaaError(f"none of its {len(paths):,} photos is found (such as {names[0]!r}); give the folder they "
                        "are named from with --images", where=at(path))
    return paths, scores, str(table.attrs.get("model", ""))


def predict_scores(inputs: list[str], *, model: str | None, images: str | None, device: str, batch_size: int,
                   workers: int | None, engine: str, progress: bool,
                   note: Callable[[str], None]) -> tuple[list[str], np.ndarray, str, int]:
    """Score the photos with ``predict`` (each unreadable file is one line on stderr): paths,
    scores, the model and how many failed."""
    from uiaa_cli.predict.pipeline import run_predict
    from uiaa_cli.tables.table import read_table

    with tempfile.TemporaryDirectory(prefix="uiaa-rate-") as folder:
        out = os.path.join(folder, "scores.parquet")
        result = run_predict(inputs, model=model, output=out, fmt=None, images=images, device=device,
                             batch_size=batch_size, workers=workers, progress=progress, engine=engine, note=note)
        table = read_table(out)
    names = table["image"].astype(str).tolist()
    paths = [name if images is None or os.path.isabs(name) else os.path.join(images, name) for name in names]
    return paths, np.asarray(table["score"], dtype=np.float64), str(table.attrs.get("model", "")), result.failed


# ------------------------------------------------------------------------------------- plan


def shots(paths: list[str]) -> np.ndarray:
    """For each photo, the row of its shot's master: a RAW and a JPEG (or any other file) with the
    same name in one folder are one shot, mastered by the RAW (else the first of them)."""
    keys = [os.path.splitext(p)[0] for p in paths]
    master: dict[str, int] = {}
    for row, (key, path) in enumerate(zip(keys, paths)):
        if key not in master or (is_raw(path) and not is_raw(paths[master[key]])):
            master[key] = row
    return np.array([master[k] for k in keys], dtype=np.int64)


@dataclass
class Plan:
    """The table ``rate`` shows (one row per photo) and, per row, the keys to set in its ``xmp``
    file (None: nothing to write)."""

    table: Table
    changes: list[dict[str, str | None] | None]


def plan(paths: list[str], scores: np.ndarray, settings: RateSettings, model: str = "",
         report: RateReport | None = None) -> Plan:
    """What ``rate`` writes for each photo: see the module doc."""
    report = report if report is not None else RateReport()
    n = len(paths)
    report.photos = n
    master = shots(paths)
    is_master = master == np.arange(n)
    masters = np.flatnonzero(is_master)
    shot_stars = np.zeros(n, dtype=np.int64)
    shot_stars[masters] = stars(scores[masters], settings.stars)
    group, pick, size, sharp = (np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool), np.ones(n, dtype=np.int64),
                                np.full(n, np.nan))
    if settings.cull:
        group[masters], pick[masters], size[masters], sharp[masters] = cull(
            [paths[i] for i in masters], scores[masters], settings, report)
        if settings.pick == "bump":
            bumped = masters[pick[masters] & (size[masters] > 1)]
            shot_stars[bumped] = np.minimum(shot_stars[bumped] + 1, 5)
    # every file of a shot takes its master's values
    shot_stars, group, pick, size, sharp = (a[master] for a in (shot_stars, group, pick, size, sharp))
    shot_scores = scores[master]

    targets = [target_of(p, settings) for p in paths]
    owner: dict[str, int] = {}
    for row, target in enumerate(targets):
        # one file per target: the shot's master first (a shared base sidecar is the RAW's)
        if target not in owner or (is_master[row] and not is_master[owner[target]]):
            owner[target] = row
    columns: dict[str, list[Any]] = {name: [] for name in ("rating_before", "rating", "label_before", "label",
                                                           "action")}
    changes: list[dict[str, str | None] | None] = []
    for row, (path, target) in enumerate(zip(paths, targets)):
        if owner[target] != row:
            report.shared += 1
            other = paths[owner[target]]
            for name in columns:  # what the shared file says: filled in below, once its owner is decided
                columns[name].append(None)
            columns["action"][-1] = f"shares {os.path.basename(target)} with {os.path.basename(other)}"
            changes.append(None)
            continue
        decided = decide(path, target, int(shot_stars[row]), float(shot_scores[row]),
                         PICK_LABEL if settings.cull and settings.pick == "label" and pick[row] else None,
                         settings, model, group[row] if settings.cull else None, bool(pick[row]), report)
        for name in columns:
            columns[name].append(decided[name])
        changes.append(decided["changes"])
    for row, target in enumerate(targets):
        for name in ("rating_before", "rating", "label_before", "label"):
            columns[name][row] = columns[name][owner[target]]
    table: dict[str, Any] = {"image": np.array(paths, dtype=str), "score": shot_scores}
    if settings.cull:
        table.update(group=group, group_size=size, pick=pick.astype(np.int64), sharpness=sharp)
    table["stars"] = shot_stars
    table["rating_before"] = np.array(columns["rating_before"], dtype=np.int64)
    table["rating"] = np.array(columns["rating"], dtype=np.int64)
    table["label_before"] = np.array(columns["label_before"], dtype=str)
    table["label"] = np.array(columns["label"], dtype=str)
    table["xmp"] = np.array(targets, dtype=str)
    table["action"] = np.array(columns["action"], dtype=str)
    attrs = {"uiaa": "rate", "stars": settings.stars.describe(), "sidecar": settings.sidecar, "model": model}
    return Plan(Table(table, attrs), changes)


def cull(paths: list[str], scores: np.ndarray, settings: RateSettings,
         report: RateReport) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group, pick, group size and sharpness of each shot (:mod:`uiaa_cli.catalogue.culling`)."""
    measured = culling.measure(paths, with_time=settings.grouping != "hash", workers=settings.workers)
    for k, why in measured.failed:
        report.failed.append((paths[k], f"not culled, a group of its own: {why}"))
    group = culling.groups(measured, settings.grouping, settings.gap, settings.max_distance, settings.min_similarity)
    pick = culling.picks(group, scores, measured.sharpness, settings.blur_ratio)
    counts = np.bincount(group)
    report.groups, report.bursts = int((counts > 0).sum()), int((counts > 1).sum())
    return group, pick, counts[group], measured.sharpness


def target_of(path: str, settings: RateSettings) -> str:
    """The file a photo's rating goes to: the JPEG itself (``--embed``) or its sidecar."""
    if settings.embed and path.lower().endswith(xmp.EMBEDDABLE):
        return path
    return str(xmp.sidecar_path(path, settings.sidecar))


def decide(path: str, target: str, proposed: int, score: float, label: str | None, settings: RateSettings,
           model: str, group: int | None, pick: bool, report: RateReport) -> dict[str, Any]:
    """The rating and label that ``target`` ends with, and the changes that get it there."""
    try:
        values = existing_values(path, target)
    except UiaaError as e:
        report.failed.append((target, e.message))
        return {"rating_before": 0, "rating": 0, "label_before": "", "label": "", "action": f"failed: {e.message}",
                "changes": None}
    before = xmp.rating_value(values.get(xmp.RATING))
    camera = xmp.rating_value(values.get(xmp.CAMERA_RATING))
    current = before if before is not None else camera
    ours = xmp.rating_value(values.get(xmp.OWN["Rating"]))
    hand_rating = current not in (None, 0) and current != ours
    label_before = values.get(xmp.LABEL, "")
    hand_label = bool(label_before) and label_before != values.get(xmp.OWN["Label"], "")

    changes: dict[str, str | None] = {xmp.OWN["Score"]: f"{score:.4f}", xmp.OWN["Stars"]: str(proposed)}
    if model:
        changes[xmp.OWN["Model"]] = os.path.basename(model)
    notes = []
    if hand_rating and not settings.overwrite:
        rating = current
        report.kept_ratings += 1
        notes.append("hand-set rating kept")
        if not os.path.exists(target):  # the photo's own (or a camera's) rating, copied so apps reading
            changes[xmp.RATING] = str(current)  # the new sidecar see it
    else:
        rating = proposed
        changes[xmp.RATING] = changes[xmp.OWN["Rating"]] = str(proposed)
    new_label = label_before
    if settings.cull:
        changes[xmp.OWN["Group"]] = str(group)
        changes[xmp.OWN["Pick"]] = "True" if pick else "False"
        if hand_label and not settings.overwrite:
            if label != label_before:
                report.kept_labels += 1
                notes.append("hand-set label kept")
        elif settings.pick == "label":
            new_label = label or ""
            changes[xmp.LABEL] = changes[xmp.OWN["Label"]] = label  # None removes uiaa's old label
    held = values if os.path.exists(target) else {}  # a new sidecar holds nothing yet
    changed = {k: v for k, v in changes.items() if held.get(k) != v and not (v is None and k not in held)}
    if not changed:
        action = "unchanged"
        report.unchanged += 1
    else:
        action = "merge" if os.path.exists(target) else "new"
    if notes:
        action += f" ({', '.join(notes)})"
    return {"rating_before": current or 0, "rating": rating,
            "label_before": label_before, "label": new_label, "action": action, "changes": changed or None}


def existing_values(path: str, target: str) -> dict[str, str]:
    """What the target holds now; for a sidecar not yet made, the photo's own embedded rating."""
    if os.path.exists(target):
        return xmp.read_values(target)
    try:
        return {k: v for k, v in xmp.read_values(path).items() if k in (xmp.RATING, xmp.LABEL, xmp.CAMERA_RATING)}
    except UiaaError:
        return {}  # a photo exiv2 cannot read holds no rating to keep


# ------------------------------------------------------------------------------------ apply


def apply(planned: Plan, report: RateReport) -> None:
    """Write each change of the plan (atomically, merged); failures are counted and named."""
    for row, change in enumerate(planned.changes):
        if not change:
            continue
        target = str(planned.table["xmp"][row])
        existed = os.path.exists(target)
        try:
            xmp.update(target, change)
        except UiaaError as e:
            report.failed.append((target, e.message))
            continue
        except OSError as e:
            report.failed.append((target, f"cannot write: {e.strerror or e}"))
            continue
        report.written += 1
        report.created += not existed
