"""``uiaa train``: fine-tune a torchvision backbone with one of the losses of SPEC §1.

The loop follows torchvision's references/classification/train.py: SGD with momentum, a per-epoch
learning rate (here an exponential decay from START to END), validation after every epoch, and
checkpoints ``last.pt`` (resumable) and ``best.pt`` (the epoch ``--select`` picks from the validation
metrics, see ``best_epoch``) in the run's folder, with ``metrics.csv`` holding one row per epoch.

Resuming: ``last.pt`` holds the optimiser, the epoch and step reached, the partial epoch's loss sums
and the torch RNG states; batches and flips are functions of ``(seed, epoch, step)`` (see data.py),
so a run stopped at any step and resumed ends with the same weights as one never stopped.

Many processes: under ``torchrun`` (``WORLD_SIZE > 1``) every rank trains on its share of each
epoch inside DistributedDataParallel (NCCL on CUDA, gloo on CPU); one small all-reduce per step
carries the loss and the stop flag, so a Ctrl-C or a NaN stops every rank at the same step;
validation outputs are gathered on every rank, and only rank 0 writes.

A checkpoint alone serves ``predict``::

    model, config, _ = models.load_checkpoint(path)     # eval mode, CPU, torch.load(weights_only=True)
    x = (pixels / 255 - config["mean"]) / config["std"]  # pixels warp-resized to config["size"]
    probs = losses.activate(model(x), config["activation"])
    score, std = metrics.predicted_score(probs.numpy(), config["bins"])  # std None for 2-set heads
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from uiaa_cli import metrics
from uiaa_cli.errors import UiaaError, at
from uiaa_cli.losses import LOSSES, activate, loss_function
from uiaa_cli.models.networks import (
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    activation_for,
    build_model,
    is_vgg,
    load_state,
    make_config,
    save_checkpoint,
    start_linear_head_at,
)
from uiaa_cli.tables.outputs import check_output_folder, output_lock
from uiaa_cli.tables.table import Table
from uiaa_cli.targets.labels import (
    TWO_SET_KINDS,
    LabelSettings,
    check_label_values,
    make_targets,
    probability_columns,
    rsd_columns,
    table_bins,
    table_kind,
    table_threshold,
    target_columns,
)
from uiaa_cli.training.data import CacheSource, Normalise, Source, epoch_batches, flip_mask, open_source

STOP_AFTER_STEPS = "UIAA_STOP_AFTER_STEPS"  # test hook: behave as if Ctrl-C came after N steps


@dataclass
class TrainSettings:
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
    select: str = "last"  # which epoch best.pt holds: see SELECT_RULES (the default measured, README)

    def label_settings(self) -> LabelSettings | None:
        """The ``labels`` settings of ``--kind`` (None without it); bad values are a usage error."""
        if self.kind is None:
            return None
        try:
            return LabelSettings(self.kind, self.lam, self.cap, self.delta, self.threshold, self.divisor)
        except ValueError as e:
            raise UiaaError(str(e)) from None


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: a resumable checkpoint was written (exit status 130)."""


def default_lr(kind: str, loss: str, arch: str, weights: str = "imagenet") -> tuple[float, float]:
    """Start and end learning rates (END = START / 10).

    From pretrained weights (imagenet or a file): the unified formulation's rates (ce/emd 1e-3 for
    distributions, 1e-2 for 2-set targets; mse 10^-2.5; huber 10^-1.5). From scratch
    (``--weights none``) those make the linear heads of mse and huber diverge (huber at 10^-1.5: a
    validation loss of 7e5 after one epoch on the example data), while ce and emd want more than
    1e-3 to learn in a few epochs; measured on the example data (README, "Learning rates"):
    ce/emd 1e-2, mse and huber 1e-3 (which learn at that rate because their new head starts at the
    targets' mean: ``models.start_linear_head_at``). VGG: 10x lower in every case.
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


# Which epoch best.pt holds. Measured on the example data (examples/select_rule.py, README "Which epoch
# best.pt holds"): with the decaying learning rate, the last epoch was never worse on held-out SRCC than
# the epoch any rule picked from a 45-image validation split, and SRCC picked linear-head epochs whose
# scores were far off the rating scale (held-out MSE 69 and 236 against 8.1 and 4.7). So: last.
SELECT_RULES = {
    "srcc": "highest validation SRCC",
    "smooth": "highest validation SRCC averaged over the epoch and the two before it",
    "loss": "lowest validation loss",
    "last": "the last epoch",
}


def best_epoch(history: list[dict[str, Any]], rule: str) -> int:
    """The index of the row of ``history`` that ``rule`` picks; ties go to the later epoch, and
    epochs without the metric (no validation) lose, so with no validation at all best is last."""
    def value(row: dict[str, Any], key: str, sign: float) -> float:
        v = row.get(key)
        return sign * v if v is not None and math.isfinite(v) else -math.inf

    if rule == "last":
        merit = [0.0] * len(history)
    elif rule == "loss":
        merit = [value(r, "val_loss", -1.0) for r in history]
    elif rule == "srcc":
        merit = [value(r, "srcc", 1.0) for r in history]
    elif rule == "smooth":
        srcc = [value(r, "srcc", 1.0) for r in history]
        merit = [float(np.mean(srcc[max(0, i - 2):i + 1])) for i in range(len(srcc))]
    else:
        raise UiaaError(f"unknown --select {rule!r}; choose one of {', '.join(SELECT_RULES)}")
    return max(range(len(merit)), key=lambda i: (merit[i], i))


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


# ------------------------------------------------------------------------------ devices, ranks


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def pick_device(name: str, dist: Dist) -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UiaaError(f"--device {name}: no CUDA device is available (use --device cpu)")
        if name == "cuda":
            name = f"cuda:{dist.local_rank}" if dist.on else "cuda:0"
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UiaaError(f"--device {name}: expected cuda or cuda:N") from None
        if (device.index or 0) >= torch.cuda.device_count():
            raise UiaaError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise UiaaError("--device mps: MPS is not available here (use --device cpu)")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UiaaError(f"--device {name!r}: choose auto, cpu, cuda, cuda:N or mps")


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK in the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td

    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(dist.local_rank)
    td.init_process_group("nccl" if cuda else "gloo")
    return dist


# ---------------------------------------------------------------------------------------- data


@dataclass
class Labels:
    """What the metrics need of a labels table, as matrices."""

    table: Table
    targets: np.ndarray  # (N, K) float32
    mean: np.ndarray
    std: np.ndarray | None
    rsd: np.ndarray | None
    threshold: float


def labels_of(table: Table, path: str, bins: np.ndarray | None = None,
              derive: LabelSettings | None = None) -> Labels:
    """Check a labels table (of a cache or a file) and pull out targets and ground truth.

    With ``derive`` the targets are made from the table's vote columns by ``labels.make_targets``
    (the code of ``uiaa labels``); rows that kind leaves out (binary's margin) get NaN targets.
    """
    targets = probability_columns(table)
    missing = [c for c in ("image", "mean") if c not in table]
    if derive is None and (missing or not targets):
        raise UiaaError(f"not a labels table made by 'uiaa labels': no {', '.join(missing or ['p_* target'])} "
                        "column(s)", where=at(path))
    check_label_values(table, path)
    own_bins = table_bins(table)
    if bins is not None and not np.array_equal(own_bins, bins):
        raise UiaaError(f"its scale {own_bins.tolist()} differs from the training data's {bins.tolist()}",
                        where=at(path))
    rsd_names = rsd_columns(table)
    rsd = table.matrix(rsd_names) if len(own_bins) and all(n in table for n in rsd_names) else None
    if derive is not None and (missing or rsd is None):
        raise UiaaError(f"--kind needs the vote columns of a labels table ({', '.join(rsd_names) or '1..10'}, "
                        "the share of votes per score) and 'mean'; this table lacks them", where=at(path))
    threshold = table_threshold(table, own_bins)
    if derive is None:
        matrix = table.matrix(targets).astype(np.float32)
    else:
        made = make_targets(vote_counts(table, rsd), own_bins, derive)
        matrix = np.full((len(rsd), len(made.columns)), np.nan, dtype=np.float32)
        matrix[made.keep] = made.targets
        threshold = float(derive.parameters(own_bins)["threshold"])  # as 'uiaa labels --kind' records it
    return Labels(table, matrix, table.matrix(["mean"])[:, 0],
                  table.matrix(["std"])[:, 0] if "std" in table else None, rsd, threshold)


def vote_counts(table: Table, rsd: np.ndarray) -> np.ndarray:
    """The vote counts behind a labels table: ``round(rsd * votes)`` when that gives back whole numbers
    (AVA: then ``make_targets`` sees the very counts ``labels`` saw), else the RSD itself (its moments
    are the same; ``make_targets`` normalises each row)."""
    if "votes" in table:
        votes = table.matrix(["votes"])[:, 0]
        counts = rsd * votes[:, None]
        whole = np.rint(counts)
        if np.all(np.abs(counts - whole) < 1e-6 * np.maximum(votes[:, None], 1)) and np.all(whole.sum(axis=1) >= 1):
            return whole
    return rsd


def kind_of(table: Table, labels: Labels, derive: LabelSettings | None) -> tuple[str, dict[str, Any]]:
    """The kind of the targets trained on and its parameters (those ``labels`` records for it)."""
    if derive is None:
        attrs = table.attrs
        kind = table_kind(table)
        params = {k: attrs[k] for k in ("lam", "cap", "divisor", "delta") if k in attrs}
        return kind, {**params, "threshold": labels.threshold, "derived": False}
    return derive.kind, {**derive.parameters(table_bins(table)), "derived": True}


def split_rows(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation rows: a share ``frac`` held out, chosen by ``seed``."""
    if not 0 <= frac < 1:
        raise UiaaError(f"--val-frac must lie in [0, 1), got {frac}")
    k = max(min(max(round(n * frac), 1 if frac > 0 else 0), n - 2), 0)
    order = np.random.default_rng([seed, 7]).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])


# ------------------------------------------------------------------------------- interruption


class StopFlag:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        limit = os.environ.get(STOP_AFTER_STEPS)
        self.after_steps = int(limit) if limit else None
        self.steps = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading_is_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def step(self) -> bool:
        self.steps += 1
        if self.after_steps is not None and self.steps >= self.after_steps:
            self.requested = True
        return self.requested


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ------------------------------------------------------------------------------------ reporting


class Reporter:
    """A rich progress bar (loss, images/s) on stderr, or one line per epoch; silent off rank 0."""

    def __init__(self, enabled: bool, bar: bool | None) -> None:
        self.enabled = enabled
        self.bar = enabled and (sys.stderr.isatty() if bar is None else bar)
        self.progress = None
        if self.bar:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True)
            self.progress.start()
        self.task = None

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        if self.progress is not None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, completed=done,
                                               loss=float("nan"), ips=0.0)

    def step(self, loss: float, ips: float) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=1, loss=loss, ips=ips)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    def f(key: str, fmt: str = ".4f") -> str:
        v = row.get(key)
        return "n/a" if v is None else format(v, fmt)

    return (f"uiaa train: epoch {row['epoch']}/{epochs}  lr {row['lr']:.2e}  loss {f('train_loss')}  "
            f"val loss {f('val_loss')}  SRCC {f('srcc')}  PCC {f('pcc')}  acc {f('accuracy')}  "
            f"{row['images_per_s']:.1f} img/s  {row['seconds']:.1f} s")


def summary_lines(history: list[dict[str, Any]], rule: str) -> list[str]:
    """Both checkpoints with their epoch and validation metrics: best.pt (by ``rule``) and last.pt."""
    def describe(row: dict[str, Any]) -> str:
        shown = "  ".join(f"{label} {'n/a' if row.get(key) is None else format(row[key], '.4f')}"
                          for key, label in (("val_loss", "val loss"), ("srcc", "SRCC"), ("pcc", "PCC"),
                                             ("mse", "MSE"), ("accuracy", "acc"), ("std_srcc", "std SRCC")))
        return f"epoch {row['epoch']}  {shown}"

    best = history[best_epoch(history, rule)]
    return [f"uiaa train: best.pt  {describe(best)}  ({SELECT_RULES[rule]}, --select {rule})",
            f"uiaa train: last.pt  {describe(history[-1])}"]


# ------------------------------------------------------------------------------------ outputs


def default_out(arch: str, kind: str, loss: str) -> Path:
    base = Path("runs") / f"{arch}-{kind}-{loss}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def point_latest(out: Path) -> None:
    """``latest`` beside the run (``runs/latest`` by default) -> the newest run (a relative symlink, else
    a text file naming it), when a run starts and after each epoch."""
    link = out.parent / "latest"
    tmp = out.parent / f".latest.{os.getpid()}"
    with contextlib.suppress(OSError):
        tmp.unlink()
    try:
        tmp.symlink_to(out.name, target_is_directory=True)
    except OSError:
        tmp.write_text(out.name + "\n")
    try:
        os.replace(tmp, link)
    except OSError:  # e.g. an old 'latest' folder: leave it
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    from uiaa_cli.tables.table import write_table

    names = list(history[0])
    columns = {n: np.array([np.nan if r.get(n) is None else r[n] for r in history], dtype=np.float64)
               for n in names}
    columns["epoch"] = columns["epoch"].astype(np.int64)
    write_table(Table(columns), path)


# ------------------------------------------------------------------------------------ the run


class Trainer:
    """One training run: data, model, optimiser, and the loop with its checkpoints."""

    def __init__(self, settings: TrainSettings, dist: Dist) -> None:
        self._lock: Any = None
        try:
            self.setup(settings, dist)
        except BaseException:
            self.close_lock()
            raise

    def setup(self, settings: TrainSettings, dist: Dist) -> None:
        self.dist = dist
        saved = None
        if settings.resume:
            saved = self.load_resume(Path(settings.resume))
            settings = self.resumed(settings, saved["settings"])
        self.settings = s = settings
        if s.out and dist.main:  # before any work: a run that cannot be saved is not started
            check_output_folder(s.out, what="run folder", create=False)
            self.lock_output(Path(s.out))
        if s.loss not in LOSSES:
            raise UiaaError(f"unknown loss {s.loss!r}; choose one of {', '.join(LOSSES)}")
        if s.select not in SELECT_RULES:
            raise UiaaError(f"unknown --select {s.select!r}; choose one of {', '.join(SELECT_RULES)}")
        if s.arch not in ARCHS:
            raise UiaaError(f"unknown architecture {s.arch!r}; choose one of {', '.join(ARCHS)}")
        if s.epochs < 1 or s.batch_size < 2:
            raise UiaaError("--epochs must be at least 1 and --batch-size at least 2")
        if not s.data:
            raise UiaaError("give the training data: a labels table or a cache")
        self.device = pick_device(s.device, dist)
        self.cuda = self.device.type == "cuda"
        workers = s.workers if s.workers is not None else min(8, os.cpu_count() or 1)
        self.source = open_source(s.data, images=s.images, size=s.size, workers=workers, pin_memory=self.cuda)
        derive = s.label_settings()
        self.labels = labels_of(self.source.table, s.data, derive=derive)
        self.bins = table_bins(self.source.table)
        self.kind, self.kind_params = kind_of(self.source.table, self.labels, derive)
        self.target_names = (target_columns(derive.kind, self.bins) if derive
                             else probability_columns(self.source.table))
        self.size = self.source.size
        if s.val:
            self.train_rows = np.arange(len(self.source.table))
            self.val_source = open_source(s.val, images=s.images, size=self.size, workers=workers,
                                          pin_memory=self.cuda)
            self.val_labels = labels_of(self.val_source.table, s.val, self.bins, derive)
            self.val_rows = np.arange(len(self.val_source.table))
        else:
            self.train_rows, self.val_rows = split_rows(len(self.source.table), s.val_frac, s.seed)
            self.val_source, self.val_labels = self.source, self.labels
        # Images a kind leaves out (binary's margin) do not train; the split was drawn before, so the
        # validation images are the same whatever the kind, and all of them are scored.
        self.train_rows = self.train_rows[np.isfinite(self.labels.targets[self.train_rows]).all(axis=1)]
        if len(self.train_rows) < 2:
            raise UiaaError("fewer than 2 training images", where=at(s.data))
        self.lr = s.lr or default_lr(self.kind, s.loss, s.arch, s.weights)
        self.weight_decay = s.weight_decay if s.weight_decay is not None else default_weight_decay(s.arch)

        torch.manual_seed(s.seed)
        outputs = self.labels.targets.shape[1]
        model = build_model(s.arch, outputs, "none" if saved else s.weights)
        if not saved and activation_for(s.loss) == "linear":
            start_linear_head_at(model, s.arch, self.labels.targets[self.train_rows].mean(axis=0))
        if saved:
            try:
                model.load_state_dict(saved["model"])
            except RuntimeError as e:
                raise UiaaError(f"its weights do not fit {s.arch}: {str(e).splitlines()[0][:160]}",
                                where=at(str(s.resume))) from None
        model.to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=self.lr[0], momentum=s.momentum,
                                         weight_decay=self.weight_decay)
        if saved:
            self.optimizer.load_state_dict(saved["optimizer"])
        self.net: nn.Module = model
        if dist.on:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.cuda else None)
        self.loss_fn = loss_function(s.loss)
        self.activation = activation_for(s.loss)
        self.normalise = Normalise(list(IMAGENET_MEAN), list(IMAGENET_STD), self.device, channels_last=self.cuda)
        bf16 = self.cuda and torch.cuda.is_bf16_supported()
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

        self.history: list[dict[str, Any]] = list(saved["history"]) if saved else []
        self.position = dict(saved["resume"]) if saved else {"epoch": 0, "step": 0, "loss_sum": 0.0, "seen": 0,
                                                             "seconds": 0.0}
        if saved:
            torch.set_rng_state(saved["resume"]["rng"])
            if self.cuda and "cuda_rng" in saved["resume"]:
                torch.cuda.set_rng_state_all(saved["resume"]["cuda_rng"])
        self.out = self.output_folder(saved is not None)

    # ------------------------------------------------------------------ settings and folders

    @staticmethod
    def load_resume(folder: Path) -> dict[str, Any]:
        path = folder / "last.pt" if folder.is_dir() else folder
        if folder.is_dir() and not path.exists():
            raise UiaaError("no last.pt here: not the folder of a 'uiaa train' run", where=at(str(folder)))
        payload = load_state(path)
        if not isinstance(payload, dict) or "resume" not in payload or "settings" not in payload:
            raise UiaaError("not a resumable checkpoint of 'uiaa train' (expected a run folder with last.pt)",
                            where=at(str(path)))
        return payload

    @staticmethod
    def resumed(given: TrainSettings, saved: dict[str, Any]) -> TrainSettings:
        """The saved run's settings; data paths, device, workers and display from the command line."""
        settings = TrainSettings(**{k: v for k, v in saved.items() if k in TrainSettings.__dataclass_fields__})
        if settings.lr is not None:
            settings.lr = tuple(settings.lr)
        settings.out = str(Path(given.resume) if Path(given.resume).is_dir() else Path(given.resume).parent)
        settings.resume = given.resume
        for name in ("device", "workers", "progress", "quiet"):
            setattr(settings, name, getattr(given, name))
        for name in ("data", "images", "val"):
            if getattr(given, name):
                setattr(settings, name, getattr(given, name))
        return settings

    def output_folder(self, resuming: bool) -> Path:
        s = self.settings
        out = Path(s.out) if s.out else None
        if self.dist.on:  # every rank must agree on the timestamped default name
            import torch.distributed as td

            box = [str(out or default_out(s.arch, self.kind, s.loss))]
            td.broadcast_object_list(box, src=0)
            out = Path(box[0])
        out = out or default_out(s.arch, self.kind, s.loss)
        if self.dist.main:
            check_output_folder(out, what="run folder")
            self.lock_output(out)
        if not resuming and (out / "last.pt").exists():
            self.close_lock()
            raise UiaaError(f"already holds a run: continue it with --resume {out}, or choose another --out",
                            where=at(str(out)))
        if self.dist.main:
            point_latest(out)
        return out

    # ------------------------------------------------------------------------- checkpoints

    def config(self, row: dict[str, Any] | None) -> dict[str, Any]:
        s = self.settings
        return make_config(arch=s.arch, size=self.size, bins=self.bins.tolist(), kind=self.kind,
                           kind_params=self.kind_params, targets=self.target_names, loss=s.loss,
                           threshold=self.labels.threshold,
                           epoch=row["epoch"] if row else 0, metrics=row or {})

    def save(self, name: str, row: dict[str, Any] | None, resumable: bool) -> Path:
        path = self.out / name
        state: dict[str, Any] = {}
        if resumable:
            resume = dict(self.position, rng=torch.get_rng_state())
            if self.cuda:
                resume["cuda_rng"] = torch.cuda.get_rng_state_all()
            settings = asdict(self.settings)
            for name in ("data", "images", "val"):  # absolute, so --resume works from any folder
                if settings[name]:
                    settings[name] = str(Path(settings[name]).resolve())
            state = {"optimizer": self.optimizer.state_dict(), "resume": resume, "history": self.history,
                     "settings": settings}
        save_checkpoint(path, self.model, self.config(row), **state)
        return path

    # ------------------------------------------------------------------------------ the loop

    def run(self, reporter: Reporter) -> Path:
        s = self.settings
        if self.position["epoch"] >= s.epochs:
            reporter.line(f"uiaa train: {self.out} already finished its {s.epochs} epochs")
            return self.out
        with StopFlag() as stop:
            for epoch in range(self.position["epoch"], s.epochs):
                self.train_epoch(epoch, stop, reporter)
                self.end_epoch(epoch, reporter)
                # A signal during validation: last.pt already resumes at the next epoch.
                if stop.requested and not self.dist.on and epoch + 1 < s.epochs:
                    raise Interrupted(f"interrupted after epoch {epoch + 1}: saved {self.out / 'last.pt'}; "
                                      f"continue with: uiaa train --resume {self.out}")
        return self.out

    def train_epoch(self, epoch: int, stop: StopFlag, reporter: Reporter) -> None:
        s, dist, pos = self.settings, self.dist, self.position
        lr = epoch_lr(*self.lr, epoch, s.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = epoch_batches(len(self.train_rows), s.batch_size, s.seed, epoch, rank=dist.rank, world=dist.world)
        first = pos["step"]
        reporter.start_epoch(epoch, s.epochs, len(batches), first)
        self.net.train()
        started, images = time.perf_counter(), 0
        rows_iter = self.source.batches(self.train_rows[b] for b in batches[first:])
        for step, (pixels, rows) in enumerate(rows_iter, start=first):
            if not self.usable(rows):  # its images could not be read: BatchNorm cannot train on < 2
                pos["step"] = step + 1
                continue
            x = self.normalise(pixels, flip_mask(len(rows), s.seed, epoch, step, dist.rank))
            y = torch.from_numpy(self.labels.targets[rows]).to(self.device, non_blocking=True)
            with self.autocast():
                out = self.net(x)
            loss = self.loss_fn(out.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # One all-reduce per step carries the loss and the stop flag, so all ranks agree.
            stats = torch.stack([loss.detach().float() * len(rows),
                                 torch.tensor(float(len(rows)), device=self.device),
                                 torch.tensor(float(stop.step()), device=self.device)])
            if dist.on:
                import torch.distributed as td

                td.all_reduce(stats)
            loss_sum, seen, stopping = stats.tolist()
            if not math.isfinite(loss_sum):
                self.nan_stop(loss_sum, epoch, step, lr)
            self.optimizer.step()
            pos.update(step=step + 1, loss_sum=pos["loss_sum"] + loss_sum, seen=pos["seen"] + int(seen))
            images += int(seen)
            elapsed = time.perf_counter() - started
            reporter.step(pos["loss_sum"] / max(pos["seen"], 1), images / max(elapsed, 1e-9))  # running mean
            if stopping:
                pos["seconds"] += elapsed
                path = self.save("last.pt", self.history[-1] if self.history else None, True) \
                    if dist.main else self.out / "last.pt"
                self.barrier()
                raise Interrupted(f"interrupted at epoch {epoch + 1}, step {step + 1}: saved {path}; "
                                  f"continue with: uiaa train --resume {self.out}")
        pos["seconds"] += time.perf_counter() - started
        self.report_failures(self.source, reporter)
        if not pos["seen"]:
            raise UiaaError(f"no training step was made: (almost) none of the {len(self.train_rows):,} training "
                            "images could be read (see the lines above; is --images the right folder?)",
                            where=at(str(s.data)))

    def usable(self, rows: np.ndarray) -> bool:
        """Whether a batch has the 2 images a training step needs (on every rank, under torchrun)."""
        ok = len(rows) >= 2
        if self.dist.on and not isinstance(self.source, CacheSource):  # a cache's images never fail
            import torch.distributed as td

            flag = torch.tensor(float(ok), device=self.device)
            td.all_reduce(flag, op=td.ReduceOp.MIN)
            ok = bool(flag.item())
        return ok

    def report_failures(self, source: Source, reporter: Reporter, of: str = "") -> None:
        """One line per image that could not be read (the first time only): it is left out."""
        failures = source.take_failures()
        if not self.dist.main:
            return
        for name, reason in failures[:20]:
            reporter.line(f"uiaa train: left out{of} {name}: {reason}")
        if len(failures) > 20:
            reporter.line(f"uiaa train: left out{of} {len(failures) - 20} more images that could not be read")

    def nan_stop(self, value: float, epoch: int, step: int, lr: float) -> None:
        last = self.out / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise UiaaError(f"the loss became {value} at epoch {epoch + 1}, step {step + 1} (lr {lr:.2e}): training "
                        f"stopped; {kept}. Try a lower --lr")

    def end_epoch(self, epoch: int, reporter: Reporter) -> None:
        pos = self.position
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": epoch_lr(*self.lr, epoch, self.settings.epochs),
                               "train_loss": pos["loss_sum"] / max(pos["seen"], 1)}
        row.update(self.validate(reporter))
        row.update(images_per_s=pos["seen"] / max(pos["seconds"], 1e-9), seconds=pos["seconds"])
        self.history.append(row)
        self.position = {"epoch": epoch + 1, "step": 0, "loss_sum": 0.0, "seen": 0, "seconds": 0.0}
        if self.dist.main:
            write_history(self.out / "metrics.csv", self.history)
            self.save("last.pt", row, True)
            if best_epoch(self.history, self.settings.select) == len(self.history) - 1 \
                    or not (self.out / "best.pt").exists():
                self.save("best.pt", row, False)
            point_latest(self.out)
            reporter.line(epoch_line(row, self.settings.epochs))
        self.barrier()

    def barrier(self) -> None:
        if self.dist.on:
            import torch.distributed as td

            td.barrier()

    # ---------------------------------------------------------------------------- validation

    @torch.no_grad()
    def outputs(self, source: Source, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs for ``rows`` (this rank's share, gathered on every rank), and the rows read."""
        self.model.eval()
        mine = rows[self.dist.rank::self.dist.world]
        size = self.settings.batch_size
        done, outs = [], []
        for pixels, read in source.batches(mine[i:i + size] for i in range(0, len(mine), size)):
            if not len(read):
                continue
            with self.autocast():
                outs.append(self.model(self.normalise(pixels)).float().cpu().numpy())
            done.append(read)
        k = self.labels.targets.shape[1]
        done_a = np.concatenate(done) if done else np.zeros(0, dtype=np.int64)
        outs_a = np.concatenate(outs) if outs else np.zeros((0, k), dtype=np.float32)
        if self.dist.on:
            import torch.distributed as td

            parts: list[Any] = [None] * self.dist.world
            td.all_gather_object(parts, (done_a, outs_a))
            done_a = np.concatenate([p[0] for p in parts])
            outs_a = np.concatenate([p[1] for p in parts])
            order = np.argsort(done_a, kind="stable")
            done_a, outs_a = done_a[order], outs_a[order]
        return done_a, outs_a

    def validate(self, reporter: Reporter) -> dict[str, Any]:
        result: dict[str, Any] = {"val_loss": None, **dict.fromkeys(metrics.METRICS)}
        if not len(self.val_rows):
            return result
        rows, outputs = self.outputs(self.val_source, self.val_rows)
        self.report_failures(self.val_source, reporter, " of the validation images")
        if len(rows) < 2:
            return result
        lab = self.val_labels
        out_t = torch.from_numpy(outputs)
        target = lab.targets[rows]
        has_target = np.isfinite(target).all(axis=1)  # not binary's margin images under --kind
        if target.shape[1] == outputs.shape[1] and has_target.any():
            result["val_loss"] = float(self.loss_fn(out_t[torch.from_numpy(has_target)],
                                                    torch.from_numpy(target[has_target])))
        probs = activate(out_t, self.activation).numpy().astype(np.float64)
        score, std = metrics.predicted_score(probs, self.bins)
        # The rules of 'uiaa evaluate' (metrics.assess): no distribution metric from a linear head, no
        # MSE from a binary model's score.
        result.update(metrics.evaluate(
            score, lab.mean[rows], lab.threshold, kind=self.kind, activation=self.activation, probs=probs,
            std=std, true_std=None if lab.std is None else lab.std[rows],
            rsd=None if lab.rsd is None else lab.rsd[rows]))
        return result

    def close(self) -> None:
        self.source.close()
        if self.val_source is not self.source:
            self.val_source.close()
        self.close_lock()

    def lock_output(self, out: Path) -> None:
        """One run at a time writes a folder (released in close)."""
        if self._lock is not None:
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UiaaError(f"cannot create the run folder: {e.strerror or e}", where=at(str(out))) from None
        lock = output_lock(out)
        lock.__enter__()
        self._lock = lock

    def close_lock(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)


def train(settings: TrainSettings) -> Path:
    """Run (or resume) a training run; returns its folder. Raises Interrupted after Ctrl-C/SIGTERM."""
    dist = init_distributed(settings.device)
    reporter = Reporter(dist.main and not settings.quiet, settings.progress)
    trainer = None
    try:
        trainer = Trainer(settings, dist)
        if dist.main and not settings.quiet:
            s = trainer.settings
            reporter.line(f"uiaa train: {len(trainer.train_rows):,} training and {len(trainer.val_rows):,} "
                          f"validation images, {trainer.size} px, {s.arch} ({s.weights}), {trainer.kind} with "
                          f"{s.loss}, lr {trainer.lr[0]:.2e} -> {trainer.lr[1]:.2e}, weight decay "
                          f"{trainer.weight_decay:g}, batch {s.batch_size}, {s.epochs} epochs on "
                          f"{trainer.device}{f' x {dist.world} processes' if dist.on else ''} -> {trainer.out}")
        out = trainer.run(reporter)
        if dist.main and trainer.history:
            for line in summary_lines(trainer.history, trainer.settings.select):
                reporter.line(line)
        return out
    finally:
        reporter.close()
        if trainer is not None:
            trainer.close()
        if dist.on:
            import torch.distributed as td

            td.destroy_process_group()
