"""Backbones with a new last layer, and checkpoints: one file of weights plus a plain config.

A checkpoint is a dict of tensors and plain Python values, so it loads with
``torch.load(path, weights_only=True)`` and never unpickles arbitrary objects::

    {"format": "uiaa-checkpoint", "version": 1, "config": {...}, "model": state_dict, ...}

``config`` holds everything ``predict`` needs: arch, size, mean/std normalisation, bins, kind,
target columns, activation (softmax or linear), loss, metrics, uiaa version.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from uiaa_cli import __version__
from uiaa_cli.errors import UiaaError, at

CHECKPOINT_FORMAT = "uiaa-checkpoint"
CHECKPOINT_VERSION = 1
DOWNLOAD_TIMEOUT_S = 30  # seconds without data before a download of ImageNet weights gives up
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16", "vgg16_bn",
         "efficientnet_b0", "convnext_tiny", "mobilenet_v3_large")


def is_vgg(arch: str) -> bool:
    return arch.startswith("vgg")


def activation_for(loss: str) -> str:
    """docs/maths.md: softmax over the outputs with ce/emd, linear outputs with mse/huber."""
    return "softmax" if loss in ("ce", "emd") else "linear"


def replace_head(model: nn.Module, arch: str, outputs: int) -> nn.Module:
    """Swap the backbone's last layer for a fresh ``Linear(in, outputs)``; nothing else changes."""
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, outputs)
    elif arch.startswith(("vgg", "efficientnet", "convnext", "mobilenet")):
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, outputs)
    else:
        raise UiaaError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return model


def head_layer(model: nn.Module, arch: str) -> nn.Linear:
    """The backbone's last layer (the one ``replace_head`` puts in)."""
    return model.fc if arch.startswith("resnet") else model.classifier[-1]


def start_linear_head_at(model: nn.Module, arch: str, mean: np.ndarray) -> None:
    """Make a fresh linear head output about ``mean`` (the training targets' mean) from the first step:
    its bias is ``mean`` and its weights 100x smaller than their random start.

    A linear head regressing probabilities otherwise begins with outputs of about +-1 against
    targets of about 0.1, and from scratch (``--weights none``) spent the example data's first
    epochs learning their scale rather than the ranking (Karpathy's "init well" rule).
    """
    head = head_layer(model, arch)
    with torch.no_grad():
        head.weight.mul_(0.01)
        head.bias.copy_(torch.as_tensor(mean, dtype=head.bias.dtype))


def head_parameters(model: nn.Module, arch: str) -> list[str]:
    """Names of the new layer's parameters (not loaded from ImageNet weights)."""
    head = {id(p) for p in head_layer(model, arch).parameters()}
    return [n for n, p in model.named_parameters() if id(p) in head]


def build_model(arch: str, outputs: int, weights: str = "imagenet") -> nn.Module:
    """torchvision ``arch`` with ``outputs`` outputs; ``weights`` is ``imagenet``, ``none`` or a file."""
    import torchvision

    if arch not in ARCHS:
        raise UiaaError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    builder = getattr(torchvision.models, arch)
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        previous = socket.getdefaulttimeout()
        # torch.hub's download has no timeout: behind a firewall that drops packets it would hang.
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            model = builder(weights=enum)
        except Exception as e:  # urllib/ssl/OSError/RuntimeError, depending on how the download failed
            cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
            reason = (str(e).strip().splitlines() or [""])[0][:120]
            raise UiaaError(
                f"cannot load the ImageNet weights of {arch} ({type(e).__name__}: {reason}). Offline? "
                f"Put {Path(enum.url).name} in {cache_dir}, pass --weights PATH to a local file, "
                "or train from scratch with --weights none"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
        return replace_head(model, arch, outputs)
    model = builder(weights=None)
    if weights == "none":
        return replace_head(model, arch, outputs)
    state = load_state(weights)
    if not isinstance(state, dict):
        raise UiaaError("not a weights file (expected a state dict or a uiaa checkpoint)", where=at(str(weights)))
    theirs = ""
    if "config" in state and "model" in state:  # a uiaa checkpoint: start from its backbone
        config = state["config"]
        if isinstance(config, dict) and config.get("arch"):
            theirs = f" (a {config['arch']} checkpoint)"
        state = state["model"]
    replace_head(model, arch, outputs)
    head = set(head_parameters(model, arch))
    state = {k: v for k, v in state.items() if k not in head}
    own = model.state_dict()
    # load_state_dict(strict=False) still raises on a shape mismatch: check shapes first.
    wrong = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    missing = [k for k in own if k not in state and k not in head]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or wrong:
        example = (wrong or missing or unexpected)[0]
        raise UiaaError(f"does not fit {arch}{theirs}: {len(wrong)} weights of another shape, {len(missing)} "
                        f"missing and {len(unexpected)} unexpected (e.g. {example})", where=at(str(weights)))
    model.load_state_dict(state, strict=False)
    return model


def checkpoint_arch(path: str | os.PathLike) -> str | None:
    """The backbone of a uiaa checkpoint (what ``train --weights CHECKPOINT`` fine-tunes); None for a
    plain state dict."""
    state = load_state(path)
    config = state.get("config") if isinstance(state, dict) else None
    arch = config.get("arch") if isinstance(config, dict) else None
    return arch if isinstance(arch, str) else None


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a one-line error for a missing or corrupted file."""
    if not Path(path).is_file():
        raise UiaaError("no such file", where=at(str(path)))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:120]  # first sentence
        raise UiaaError(f"not a readable checkpoint or weights file, truncated or corrupted? ({type(e).__name__}: "
                        f"{reason})", where=at(str(path))) from None


def make_config(*, arch: str, size: int, bins: list[float], kind: str, targets: list[str], loss: str,
                **extra: Any) -> dict[str, Any]:
    """The config stored with every checkpoint: all ``predict`` needs to rebuild and use the model."""
    return {"arch": arch, "size": int(size), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "bins": [float(b) for b in bins], "kind": kind, "targets": list(targets), "loss": loss,
            "activation": activation_for(loss), "uiaa_version": __version__, **extra}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: dict[str, Any], **state: Any) -> None:
    """Write weights + config (+ optional resume state) atomically."""
    from uiaa_cli.tables.writers import atomic_path

    module = model.module if hasattr(model, "module") else model
    weights = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config, "model": weights,
               **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The model (eval mode, on CPU), its config, and the whole checkpoint dict."""
    payload = load_state(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UiaaError("not a uiaa checkpoint (train one with 'uiaa train')", where=at(str(path)))
    config = payload.get("config")
    if not isinstance(config, dict) or not {"arch", "targets", "size"} <= set(config) or "model" not in payload:
        raise UiaaError("corrupted uiaa checkpoint: its config or weights are missing", where=at(str(path)))
    if config["arch"] not in ARCHS:
        raise UiaaError(f"made for architecture {config['arch']!r}, unknown to this version of uiaa",
                        where=at(str(path)))
    model = build_model(config["arch"], len(config["targets"]), "none")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise UiaaError(f"weights do not fit {config['arch']}: {str(e).splitlines()[0][:160]}",
                        where=at(str(path))) from None
    return model.eval(), config, payload


# ----------------------------------------------------------------- the deployed model: pixels to scores


class Scorer(nn.Module):
    """A checkpoint's network with its preprocessing and output activation: pixels in, scores out.

    Input: ``(N, 3, S, S)`` RGB pixels with values 0..255, uint8 or float, ``S`` the checkpoint's
    size (images warp-resized to S x S, no crop). Output: ``(score, probs)``; ``probs`` are the
    softmax memberships over the target sets (raw outputs for linear heads), ``score`` is
    ``sum_m w_m probs_m`` with ``w`` the bins (M-set) or ``[0, b_M]`` (2-set), as docs/maths.md says.
    This module is what ``uiaa convert`` exports and what both of predict's engines run (the ONNX
    engine its exported graph), so deployed models and predict agree.
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

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().mul(self.scale).add(self.shift)

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """The network's outputs as memberships (softmax, sigmoid's ``[1 - p, p]``, or as they are)."""
        if self.activation == "softmax":
            return torch.softmax(out, dim=1)
        if self.activation == "sigmoid":  # one output: p_high
            high = torch.sigmoid(out[:, :1])
            return torch.cat([1 - high, high], dim=1)
        return out

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self.activate(self.model(self.normalise(pixels)))
        return probs @ self.weights, probs


def score_weights(config: dict[str, Any]) -> list[float]:
    """Weights of the score over the outputs: ``[0, b_M]`` for 2-set targets, the bins for M-set."""
    bins = [float(b) for b in config["bins"]]
    if len(config["targets"]) == 2 and len(bins) != 2:
        return [0.0, bins[-1]]
    return bins


def load_scorer(path: str | os.PathLike) -> tuple[Scorer, dict[str, Any]]:
    """A checkpoint as an eval-mode Scorer (on CPU) and its config; weights that are not finite are refused
    (``check_finite``), so neither engine, nor an export, ever scores with them."""
    model, config, _ = load_checkpoint(path)
    check_finite(model, path)
    return Scorer(model, config).eval(), config


def check_finite(model: nn.Module, path: str | os.PathLike) -> None:
    """One error if a weight or buffer holds NaN or inf: a run whose training diverged scores every
    image NaN. (Training's own resume loads such a checkpoint, for inspection; deploying it is refused.)"""
    state = model.state_dict()
    bad = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise UiaaError(f"the model's weights hold NaN or infinite values ({len(bad)} of {len(state)} tensors, "
                        f"e.g. {bad[0]}): its training diverged; use an earlier checkpoint, or train again with "
                        "a lower --lr", where=at(str(path)))
