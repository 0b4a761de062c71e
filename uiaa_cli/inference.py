"""A checkpoint as a scorer: pixels in, scores out (torch). ``uiaa predict`` itself is ``predict.py``.

Preprocessing is training's: warp-resize to the checkpoint's size (``images.decode_image``), then
``x / 255`` normalised with the checkpoint's mean and std, inside :class:`Scorer`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from uiaa_cli.errors import UiaaError, at

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".h5", ".hdf5")
NO_MODEL = ("no model: give --model FILE, set UIAA_MODEL, or train one with "
            "'uiaa train LABELS-OR-CACHE' (it writes runs/<name>/best.pt, which predict then finds)")


# ------------------------------------------------------------------------------------ the model


class Scorer(nn.Module):
    """A checkpoint's network with its preprocessing and output activation: pixels in, scores out.

    Input: ``(N, 3, S, S)`` RGB pixels with values 0..255, uint8 or float, ``S`` the checkpoint's
    size (images warp-resized to S x S, no crop). Output: ``(score, probs)``; ``probs`` are the
    softmax memberships over the target sets (raw outputs for linear heads), ``score`` is
    ``sum_m w_m probs_m`` with ``w`` the bins (M-set) or ``[0, b_M]`` (2-set), as SPEC §1.
    This module is what ``uiaa convert`` exports, so deployed models and predict agree.
    """

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(config["std"], dtype=torch.float32).view(1, 3, 1, 1)
        # The same two operations as training's Normalise (x * 1/(255 std) - mean/std), so the inputs
        # the network sees are bit-identical to training's.
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)
        self.register_buffer("weights", torch.tensor(score_weights(config), dtype=torch.float32))
        self.activation = config.get("activation", "softmax")

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        x = pixels.float().mul(self.scale).add(self.shift)
        out = self.model(x)
        if self.activation == "softmax":
            probs = torch.softmax(out, dim=1)
        elif self.activation == "sigmoid":  # one output: p_high
            high = torch.sigmoid(out[:, :1])
            probs = torch.cat([1 - high, high], dim=1)
        else:
            probs = out
        return probs @ self.weights, probs


def score_weights(config: dict[str, Any]) -> list[float]:
    """Weights of the score over the outputs: ``[0, b_M]`` for 2-set targets, the bins for M-set."""
    bins = [float(b) for b in config["bins"]]
    if len(config["targets"]) == 2 and len(bins) != 2:
        return [0.0, bins[-1]]
    return bins


def load_scorer(path: str | os.PathLike) -> tuple[Scorer, dict[str, Any]]:
    """A checkpoint as an eval-mode Scorer (on CPU) and its config."""
    from uiaa_cli.models import load_checkpoint

    model, config, _ = load_checkpoint(path)
    return Scorer(model, config).eval(), config


def find_model(model: str | None, runs: Path = Path("runs")) -> Path:
    """``--model``, else ``$UIAA_MODEL``, else the newest run under ``./runs``.

    A run folder stands for its ``best.pt`` (else ``last.pt``: training was interrupted). The newest
    run is the one ``runs/latest`` points at ('uiaa train' keeps it up to date: a symlink, or a text
    file naming the run), else the run with the newest checkpoint.
    """
    given = model or os.environ.get("UIAA_MODEL") or None
    if given:
        path = Path(given)
        if path.is_dir():
            checkpoint = run_checkpoint(path)
            if checkpoint is None:
                raise UiaaError("no best.pt or last.pt in this folder", where=at(str(path)))
            return checkpoint
        if not path.is_file():
            raise UiaaError("no such model file" + ("" if model else " (from $UIAA_MODEL)"), where=at(str(path)))
        return path
    latest = runs / "latest"
    if latest.is_file():  # a text file naming the run
        latest = runs / latest.read_text().strip()
    if latest.is_dir() and run_checkpoint(latest) is not None:
        return run_checkpoint(latest)
    candidates = [c for c in map(run_checkpoint, runs.iterdir() if runs.is_dir() else []) if c]
    if not candidates:
        raise UiaaError(NO_MODEL)
    return max(candidates, key=lambda p: p.stat().st_mtime)


def run_checkpoint(folder: Path) -> Path | None:
    """A run folder's best.pt, else its last.pt, else None."""
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    return None


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA (this process's local rank under torchrun), else MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UiaaError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UiaaError(f"--device {name}: CUDA is not available on this machine")
    return device


class _TorchEngine:
    """TEMPORARY adapter with the shape of ``engines.Engine`` (deleted once engines.py is merged)."""

    name = "torch"

    def __init__(self, path: Path, device: str) -> None:
        self.scorer, self.config = load_scorer(path)
        self.device = pick_device(device)
        self.scorer = self.scorer.to(self.device)
        self.model = str(path)

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(pixels).to(self.device).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            score, probs = self.scorer(x)
        return score.float().cpu().numpy(), probs.float().cpu().numpy()


def open_engine(model: str | None, engine: str = "auto", device: str = "auto", *,
                threads: int | None = None) -> _TorchEngine:
    """TEMPORARY: ``engines.open_engine``'s shape over today's Scorer."""
    return _TorchEngine(find_model(model), device)
