"""What a training run is told: ``TrainSettings`` (the options of ``uiaa train``) and their defaults.

The learning rate decays exponentially from START to END over the epochs (``epoch_lr``); without
``--lr`` the rates measured for each loss and backbone apply (``default_lr``), and without
``--weight-decay`` the recipes' decay (``default_weight_decay``). ``--select`` names the rule that
picks the epoch ``best.pt`` holds from the validation metrics (``SELECT_RULES``, ``best_epoch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError
from uiaa_cli.losses import LOSSES
from uiaa_cli.models.networks import ARCHS, is_vgg
from uiaa_cli.targets.labels import TWO_SET_KINDS, LabelSettings


@dataclass
class TrainSettings:
    """The options of ``uiaa train`` (a None stands for the default named beside it)."""

    data: str | None
    images: str | None = None
    arch: str = "resnet50"
    loss: str = "ce"
    epochs: int = 10
    lr: tuple[float, float] | None = None  # None: default_lr(kind, loss, arch, weights)
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 for VGG, 1e-4 otherwise
    size: int | None = None  # None: the cache's size, or 384 for a labels table
    weights: str = "imagenet"
    val: str | None = None
    val_frac: float = 0.1
    device: str = "auto"
    workers: int | None = None
    seed: int = 0
    out: str | None = None
    resume: str | None = None
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    quiet: bool = False
    # --kind: targets derived from the vote columns (None: the table's own targets)
    kind: str | None = None
    lam: float = 0.5
    cap: float = 1.5
    divisor: str = "2var"
    threshold: float | None = None
    delta: float = 0.0
    select: str = "last"  # which epoch best.pt holds: see SELECT_RULES (the default measured there)
    max_missing: float = 0.05  # the largest share of missing images a run accepts (inputs.py)
    compile: str = "auto"  # torch.compile the network: auto (CUDA only), on, off (runtime.compile_wanted)
    decode: str = "auto"  # where a jpeg cache is decoded: auto/cpu (loader processes), gpu (runtime.decode_device)

    def label_settings(self) -> LabelSettings | None:
        """The ``labels`` settings of ``--kind`` (None without it); bad values are a usage error."""
        if self.kind is None:
            return None
        try:
            return LabelSettings(self.kind, self.lam, self.cap, self.delta, self.threshold, self.divisor)
        except ValueError as e:
            raise UiaaError(str(e)) from None


    def check(self) -> None:
        """Refuse a loss, rule, backbone or size no run can use, before any data is read."""
        if self.loss not in LOSSES:
            raise UiaaError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.select not in SELECT_RULES:
            raise UiaaError(f"unknown --select {self.select!r}; choose one of {', '.join(SELECT_RULES)}")
        if self.arch not in ARCHS:
            raise UiaaError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.epochs < 1 or self.batch_size < 2:
            raise UiaaError("--epochs must be at least 1 and --batch-size at least 2")
        if not self.data:
            raise UiaaError("give the training data: a labels table or a cache")
        if self.compile not in COMPILE_CHOICES:
            raise UiaaError(f"--compile {self.compile!r}: choose one of {', '.join(COMPILE_CHOICES)}")
        if self.decode not in DECODE_CHOICES:
            raise UiaaError(f"--decode {self.decode!r}: choose one of {', '.join(DECODE_CHOICES)}")


COMPILE_CHOICES = ("auto", "on", "off")  # --compile (runtime.compile_wanted)
DECODE_CHOICES = ("auto", "cpu", "gpu")  # --decode (runtime.decode_device)


def default_lr(kind: str, loss: str, arch: str, weights: str = "imagenet") -> tuple[float, float]:
    """Start and end learning rates (END = START / 10).

    From pretrained weights (imagenet or a file): the unified formulation's rates (ce/emd 1e-3 for
    distributions, 1e-2 for 2-set targets; mse 10^-2.5; huber 10^-1.5). From scratch
    (``--weights none``) those make the linear heads of mse and huber diverge (huber at 10^-1.5: a
    validation loss of 7e5 after one epoch on the example data), while ce and emd want more than
    1e-3 to learn in a few epochs; measured on the example data (docs/commands/train.md, "Learning
    rates"): ce/emd 1e-2, mse and huber 1e-3 (which learn at that rate because their new head starts at
    the targets' mean: ``models.start_linear_head_at``). VGG: 10x lower in every case.
    """
    if weights == "none":
        start = 1e-3 if loss in ("mse", "huber") else 1e-2
    elif loss == "mse":
        start = 10**-2.5
    elif loss == "huber":
        start = 10**-1.5
    else:  # ce, emd
        start = 1e-2 if kind in TWO_SET_KINDS else 1e-3
    if is_vgg(arch):
        start /= 10
    return start, start / 10


# Which epoch best.pt holds. Measured on the example data (examples/select_rule.py; docs/commands/train.md,
# "Which epoch best.pt holds"): with the decaying learning rate, the last epoch was never worse on held-out SRCC than
# the epoch any rule picked from a 45-image validation split, and SRCC picked linear-head epochs whose
# scores were far off the rating scale (held-out MSE 69 and 236 against 8.1 and 4.7). So: last.
SELECT_RULES = {
    "srcc": "highest validation SRCC",
    "smooth": "highest validation SRCC averaged over the epoch and the two before it",
    "loss": "lowest validation loss",
    "last": "the last epoch",
}


def best_epoch(history: list[dict[str, Any]], rule: str, validated: bool | None = None) -> int | None:
    """The index of the row of ``history`` that ``rule`` picks among the sound epochs (``sound_epoch``),
    or None when none is; ties go to the later epoch. ``validated``: whether the run has validation
    images (default: whether any row holds a validation value); with none at all, best is last."""
    if validated is None:
        validated = any(r.get(k) is not None for r in history for k in ("val_loss", "srcc"))

    def value(row: dict[str, Any], key: str, sign: float) -> float:
        v = row.get(key)
        return sign * v if v is not None and math.isfinite(v) else -math.inf

    sound = [sound_epoch(row, rule, validated) for row in history]
    if rule == "last":
        merit = [0.0] * len(history)
    elif rule == "loss":
        merit = [value(r, "val_loss", -1.0) for r in history]
    elif rule == "srcc":
        merit = [value(r, "srcc", 1.0) for r in history]
    elif rule == "smooth":
        # the mean of the sound epochs' values in the window: a NaN epoch neither sinks nor lifts its neighbours
        srcc = [value(r, "srcc", 1.0) if ok else -math.inf for r, ok in zip(history, sound, strict=True)]
        windows = [[v for v in srcc[max(0, i - 2):i + 1] if v > -math.inf] for i in range(len(srcc))]
        merit = [float(np.mean(w)) if w else -math.inf for w in windows]
    else:
        raise UiaaError(f"unknown --select {rule!r}; choose one of {', '.join(SELECT_RULES)}")
    picks = [i for i, ok in enumerate(sound) if ok]
    return max(picks, key=lambda i: (merit[i], i)) if picks else None


def sound_epoch(row: dict[str, Any], rule: str, validated: bool = True) -> bool:
    """Whether an epoch may be ``best.pt``: its validation was measured and is finite (the loss, where
    an image has a target, and for ``srcc``/``smooth`` the SRCC too). A NaN or infinite loss is a
    model whose outputs diverged; no value at all, no validation image could be read. Without
    validation images in the run, every epoch may be (its training loss was finite: see nan_stop)."""
    if not validated:
        return True

    def finite(key: str) -> bool:
        v = row.get(key)
        return v is not None and math.isfinite(v)

    loss, srcc = row.get("val_loss"), row.get("srcc")
    if loss is None and srcc is None:
        return False
    if loss is not None and not math.isfinite(loss):
        return False
    return finite("srcc") if rule in ("srcc", "smooth") else loss is not None or finite("srcc")


def default_weight_decay(arch: str) -> float:
    """5e-4 for VGG, 1e-4 for ResNet and the others (as torchvision's and the paper's recipes)."""
    return 5e-4 if is_vgg(arch) else 1e-4


def epoch_lr(start: float, end: float, epoch: int, epochs: int) -> float:
    """``START * (END/START)^(e/(epochs-1))`` for epoch ``e`` counted from 0."""
    if epochs <= 1:
        return start
    return start * (end / start) ** (epoch / (epochs - 1))


def parse_lr(text: str) -> tuple[float, float]:
    """``START,END`` (or one value for a constant rate)."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(math.isfinite(p) and p > 0 for p in parts):
        raise UiaaError(f"--lr {text!r}: expected START,END, two positive numbers (e.g. 1e-3,1e-4)")
    return parts[0], parts[1]
