"""A run's checkpoints: what ``last.pt`` and ``best.pt`` hold, and resuming from ``last.pt``.

Both hold the model and its config (docs/formats.md), which alone serve ``predict``::

    model, config, _ = models.load_checkpoint(path)     # eval mode, CPU, torch.load(weights_only=True)
    x = (pixels / 255 - config["mean"]) / config["std"]  # pixels warp-resized to config["size"]
    probs = losses.activate(model(x), config["activation"])
    score, std = metrics.predicted_score(probs.numpy(), config["bins"])  # std None for 2-set heads

``last.pt`` also holds the optimiser, the run's settings, its history (the rows of ``metrics.csv``)
and its position: the epoch and step reached, the partial epoch's loss sums and the torch RNG states.
Batches and flips are functions of ``(seed, epoch, step)`` (see data.py), so a run stopped at any step
and resumed ends with the same weights as one never stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.models.networks import load_state, make_config
from uiaa_cli.training.run_data import RunData
from uiaa_cli.training.settings import TrainSettings


@dataclass
class Position:
    """Where a run stands: the epoch and the step reached in it, and that epoch's loss sum, images and
    seconds so far (``last.pt`` holds it as a dict, beside the RNG states)."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def saved(cls, resume: dict[str, Any]) -> Position:
        """The position a checkpoint's ``resume`` dict holds."""
        return cls(**{f.name: resume[f.name] for f in fields(cls)})

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)


def run_config(settings: TrainSettings, data: RunData, row: dict[str, Any] | None) -> dict[str, Any]:
    """The config a checkpoint carries; ``row`` is its epoch's row of the history (None before the first)."""
    return make_config(arch=settings.arch, size=data.size, bins=data.bins.tolist(), kind=data.kind,
                       kind_params=data.kind_params, targets=data.target_names, loss=settings.loss,
                       threshold=data.labels.threshold,
                       epoch=row["epoch"] if row else 0, metrics=row or {})


def resume_state(optimizer: torch.optim.Optimizer, position: Position, history: list[dict[str, Any]],
                 settings: TrainSettings, cuda: bool) -> dict[str, Any]:
    """What ``last.pt`` holds beyond the model and its config."""
    resume = dict(asdict(position), rng=torch.get_rng_state())
    if cuda:
        resume["cuda_rng"] = torch.cuda.get_rng_state_all()
    saved = asdict(settings)
    for name in ("data", "images", "val"):  # absolute, so --resume works from any folder
        if saved[name]:
            saved[name] = str(Path(saved[name]).resolve())
    return {"optimizer": optimizer.state_dict(), "resume": resume, "history": history, "settings": saved}


def load_resume(folder: Path) -> dict[str, Any]:
    """The payload of a run's ``last.pt`` (``folder`` is the run's folder or the file itself)."""
    path = folder / "last.pt" if folder.is_dir() else folder
    if folder.is_dir() and not path.exists():
        raise UiaaError("no last.pt here: not the folder of a 'uiaa train' run", where=at(str(folder)))
    payload = load_state(path)
    if not isinstance(payload, dict) or "resume" not in payload or "settings" not in payload:
        raise UiaaError("not a resumable checkpoint of 'uiaa train' (expected a run folder with last.pt)",
                        where=at(str(path)))
    return payload


def resumed(given: TrainSettings, saved: dict[str, Any]) -> TrainSettings:
    """The saved run's settings; data paths, --max-missing, device, workers, --compile, --decode and display
    from the command line."""
    settings = TrainSettings(**{k: v for k, v in saved.items() if k in TrainSettings.__dataclass_fields__})
    if settings.lr is not None:
        settings.lr = tuple(settings.lr)
    settings.out = str(Path(given.resume) if Path(given.resume).is_dir() else Path(given.resume).parent)
    settings.resume = given.resume
    # max_missing: the data may change; compile and decode: how this machine runs it
    for name in ("device", "workers", "progress", "quiet", "max_missing", "compile", "decode"):
        setattr(settings, name, getattr(given, name))
    for name in ("data", "images", "val"):
        if getattr(given, name):
            setattr(settings, name, getattr(given, name))
    return settings


def restore_weights(model: nn.Module, saved: dict[str, Any], settings: TrainSettings) -> None:
    """The model's weights from ``last.pt``; weights of another backbone are a clear error."""
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as e:
        raise UiaaError(f"its weights do not fit {settings.arch}: {str(e).splitlines()[0][:160]}",
                        where=at(str(settings.resume))) from None


def restore_rng(saved: dict[str, Any], cuda: bool) -> None:
    """The torch RNG states ``last.pt`` saved, so the resumed steps draw what the stopped run would have."""
    torch.set_rng_state(saved["resume"]["rng"])
    if cuda and "cuda_rng" in saved["resume"]:
        torch.cuda.set_rng_state_all(saved["resume"]["cuda_rng"])
