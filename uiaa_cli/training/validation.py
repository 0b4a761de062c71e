"""Validation after each epoch: the model's outputs for the validation images, gathered from every
rank in row order, and the metrics of ``uiaa evaluate`` computed from them (docs/maths.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uiaa_cli import metrics
from uiaa_cli.losses import activate
from uiaa_cli.targets.table_targets import Labels
from uiaa_cli.training.runtime import Dist


def no_metrics() -> dict[str, Any]:
    """A row's validation columns, none measured (no validation images, or fewer than 2 read)."""
    return {"val_loss": None, **dict.fromkeys(metrics.METRICS)}


def gather_rows(dist: Dist, done: np.ndarray, outs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's rows and outputs, on every rank, in row order."""
    if not dist.on:
        return done, outs
    parts = dist.gather((done, outs))
    done = np.concatenate([p[0] for p in parts])
    outs = np.concatenate([p[1] for p in parts])
    order = np.argsort(done, kind="stable")
    return done[order], outs[order]


def val_metrics(outputs: np.ndarray, rows: np.ndarray, lab: Labels, loss_fn: Callable[[Tensor, Tensor], Tensor],
                activation: str, bins: np.ndarray, kind: str) -> dict[str, Any]:
    """The validation loss and the metrics of the raw ``outputs`` for the validation ``rows``."""
    result = no_metrics()
    out_t = torch.from_numpy(outputs)
    target = lab.targets[rows]
    has_target = np.isfinite(target).all(axis=1)  # not binary's margin images under --kind
    if target.shape[1] == outputs.shape[1] and has_target.any():
        result["val_loss"] = float(loss_fn(out_t[torch.from_numpy(has_target)],
                                           torch.from_numpy(target[has_target])))
    if not np.isfinite(outputs).all():  # diverged weights: no loss to trust, whatever images have targets
        result["val_loss"] = float("nan")
    probs = activate(out_t, activation).numpy().astype(np.float64)
    score, std = metrics.predicted_score(probs, bins)
    # The rules of 'uiaa evaluate' (metrics.assess): no distribution metric from a linear head, no
    # MSE from a binary model's score.
    result.update(metrics.evaluate(
        score, lab.mean[rows], lab.threshold, kind=kind, activation=activation, probs=probs,
        std=std, true_std=None if lab.std is None else lab.std[rows],
        rsd=None if lab.rsd is None else lab.rsd[rows]))
    return result
