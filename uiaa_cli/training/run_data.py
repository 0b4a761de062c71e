"""The data of one run: its training and validation sources, their targets, and the split.

Validation is ``--val`` (a table or cache of its own) or a share ``--val-frac`` of the training data
held out by ``split_rows``. Images that a ``--kind`` leaves out (binary's margin) do not train but are
still scored in validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.targets.labels import probability_columns, table_bins, target_columns
from uiaa_cli.targets.table_targets import Labels, kind_of, labels_of
from uiaa_cli.training.data import CacheSource, Source, open_source
from uiaa_cli.training.inputs import Inputs, check_inputs
from uiaa_cli.training.settings import TrainSettings

if TYPE_CHECKING:
    import torch


@dataclass
class RunData:
    """The images a run trains and validates on, with their targets and the kind of those targets."""

    source: Source
    labels: Labels
    train_rows: np.ndarray
    val_source: Source
    val_labels: Labels
    val_rows: np.ndarray
    bins: np.ndarray
    kind: str
    kind_params: dict[str, Any]
    target_names: list[str]
    inputs: Inputs  # what check_inputs found: the images missing from the data and --val

    @property
    def size(self) -> int:
        return self.source.size

    def close(self) -> None:
        self.source.close()
        if self.val_source is not self.source:
            self.val_source.close()


def open_data(s: TrainSettings, pin_memory: bool, inputs: Inputs | None = None,
              device: torch.device | None = None) -> RunData:
    """Open the training data (and ``--val``), check their labels, and split off the validation rows.

    ``inputs``: the data as ``check_inputs`` checked it before torch was imported (checked here
    otherwise, or when they were checked for other paths: a resumed run's). ``device``: the run's,
    where ``--decode gpu`` decodes a jpeg cache (default: the CPU)."""
    import torch

    from uiaa_cli.training.runtime import decode_device, default_workers

    if inputs is None or not inputs.fits(s.data, s.images, s.val, s.max_missing):
        inputs = check_inputs(s.data, s.images, s.val, s.max_missing)
    workers = s.workers if s.workers is not None else default_workers()
    source = open_source(s.data, images=s.images, size=s.size, workers=workers, pin_memory=pin_memory,
                         checked=inputs.data)
    jpeg = isinstance(source, CacheSource) and source.jpeg
    try:
        decode_on = decode_device(s.decode, device or torch.device("cpu"), jpeg)
    except UiaaError:
        source.close()
        raise
    if jpeg:
        source.decode_on = decode_on
    derive = s.label_settings()
    labels = labels_of(source.table, s.data, derive=derive)
    bins = table_bins(source.table)
    kind, kind_params = kind_of(source.table, labels, derive)
    target_names = target_columns(derive.kind, bins) if derive else probability_columns(source.table)
    if s.val:
        train_rows = np.arange(len(source.table))
        val_source = open_source(s.val, images=s.images, size=source.size, workers=workers, pin_memory=pin_memory,
                                 checked=inputs.val)
        if isinstance(val_source, CacheSource) and val_source.jpeg:
            val_source.decode_on = decode_on
        val_labels = labels_of(val_source.table, s.val, bins, derive)
        val_rows = np.arange(len(val_source.table))
    else:
        train_rows, val_rows = split_rows(len(source.table), s.val_frac, s.seed)
        val_source, val_labels = source, labels
    # Images a kind leaves out (binary's margin) do not train; the split was drawn before, so the
    # validation images are the same whatever the kind, and all of them are scored.
    train_rows = train_rows[np.isfinite(labels.targets[train_rows]).all(axis=1)]
    if len(train_rows) < 2:
        raise UiaaError("fewer than 2 training images", where=at(s.data))
    return RunData(source, labels, train_rows, val_source, val_labels, val_rows, bins, kind, kind_params,
                   target_names, inputs)


def split_rows(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation rows: a share ``frac`` held out, chosen by ``seed``."""
    if not 0 <= frac < 1:
        raise UiaaError(f"--val-frac must lie in [0, 1), got {frac}")
    k = max(min(max(round(n * frac), 1 if frac > 0 else 0), n - 2), 0)
    order = np.random.default_rng([seed, 7]).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])
