"""``uiaa train``: fine-tune a torchvision backbone with one of the losses of docs/maths.md.

The loop follows torchvision's references/classification/train.py: SGD with momentum, a per-epoch
learning rate (an exponential decay from START to END, see settings.py), validation after every
epoch, and checkpoints ``last.pt`` (resumable) and ``best.pt`` (the epoch ``--select`` picks) in the
run's folder, with ``metrics.csv`` holding one row per epoch. ``Trainer`` is the run: set up from its
settings (the data, the model, and on ``--resume`` the state ``last.pt`` saved), then the loop;
``train`` is the entry point of the command.

Around it: run_data.py opens the data and splits it, checkpoints.py writes and resumes checkpoints,
run_folder.py names and locks the run's folder, runtime.py holds the device, the ranks under
torchrun (one small all-reduce per step carries the loss and the stop flag, so a Ctrl-C or a NaN
stops every rank at the same step; only rank 0 writes) and the stop flag, and report.py the lines
on stderr.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uiaa_cli.errors import ExitStatus, UiaaError, at
from uiaa_cli.losses import loss_function
from uiaa_cli.models.devices import pick_device
from uiaa_cli.models.networks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    activation_for,
    build_model,
    save_checkpoint,
    start_linear_head_at,
)
from uiaa_cli.training.checkpoints import (
    Position,
    load_resume,
    restore_rng,
    restore_weights,
    resume_state,
    resumed,
    run_config,
)
from uiaa_cli.training.data import CacheSource, Normalise, Source, epoch_batches, flip_mask
from uiaa_cli.training.inputs import Inputs
from uiaa_cli.training.report import Reporter, epoch_line, report_failures, summary_lines, write_history
from uiaa_cli.training.run_data import open_data
from uiaa_cli.training.run_folder import RunFolder, point_latest, run_folder, withdraw_latest
from uiaa_cli.training.runtime import (
    Dist,
    Interrupted,
    StepTotals,
    StopFlag,
    autocast_for,
    compile_problem,
    compile_wanted,
    compiled,
    fit_optimizer,
    init_distributed,
    make_optimizer,
    readback_lag,
)
from uiaa_cli.training.settings import TrainSettings, best_epoch, default_lr, default_weight_decay, epoch_lr
from uiaa_cli.training.validation import gather_rows, no_metrics, val_metrics


class Trainer:
    """One training run: set up from its settings, then the loop with its checkpoints and validation."""

    def __init__(self, settings: TrainSettings, dist: Dist, inputs: Inputs | None = None) -> None:
        self.folder = RunFolder()
        try:
            self.setup(settings, dist, inputs)
        except BaseException:
            self.folder.close()
            raise

    # ------------------------------------------------------------------------------ set-up

    def setup(self, settings: TrainSettings, dist: Dist, inputs: Inputs | None) -> None:
        self.dist = dist
        saved = load_resume(Path(settings.resume)) if settings.resume else None
        self.settings = s = resumed(settings, saved["settings"]) if saved else settings
        if s.out and dist.main:  # before any work: a run that cannot be saved is not started
            self.folder.reserve(Path(s.out))
        s.check()
        self.device = pick_device(s.device, dist.local_rank if dist.on else 0)
        self.cuda = self.device.type == "cuda"
        if self.cuda:  # one shape per run (and one for the last batch): cuDNN picks its fastest kernels once
            torch.backends.cudnn.benchmark = True
        self.data = open_data(s, pin_memory=self.cuda, inputs=inputs, device=self.device)
        self.validated = len(self.data.val_rows) > 0  # else best.pt is simply the last epoch
        self.bins, self.kind, self.size = self.data.bins, self.data.kind, self.data.size
        self.lr = s.lr or default_lr(self.kind, s.loss, s.arch, s.weights)
        self.weight_decay = s.weight_decay if s.weight_decay is not None else default_weight_decay(s.arch)
        self.setup_model(saved)
        self.history: list[dict[str, Any]] = list(saved["history"]) if saved else []
        self.position = Position.saved(saved["resume"]) if saved else Position()
        self.trained = 0  # images the last epoch trained on (for the message when no epoch is sound)
        if saved:
            restore_rng(saved, self.cuda)
        self.out = self.folder.open(run_folder(s.out, s.arch, self.kind, s.loss, dist), dist, saved is not None)

    def setup_model(self, saved: dict[str, Any] | None) -> None:
        """The network (new, or as ``last.pt`` left it), on the device, and its optimiser and loss."""
        s, targets = self.settings, self.data.labels.targets
        torch.manual_seed(s.seed)
        model = build_model(s.arch, targets.shape[1], "none" if saved else s.weights)
        if saved:
            restore_weights(model, saved, s)
        elif activation_for(s.loss) == "linear":
            start_linear_head_at(model, s.arch, targets[self.data.train_rows].mean(axis=0))
        model.to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = make_optimizer(model.parameters(), lr=self.lr[0], momentum=s.momentum,
                                        weight_decay=self.weight_decay, device=self.device)
        if saved:
            self.optimizer.load_state_dict(saved["optimizer"])
            fit_optimizer(self.optimizer, self.device)
        self.net = self.dist.wrap(model, self.device)
        # Full batches step through the compiled network; the short last one eagerly (same weights, no
        # second compilation for its shape).
        self.step_net = compiled(self.net, self.device, required=s.compile == "on") \
            if compile_wanted(s.compile, self.device) else self.net
        self.loss_fn = loss_function(s.loss)
        self.activation = activation_for(s.loss)
        self.normalise = Normalise(list(IMAGENET_MEAN), list(IMAGENET_STD), self.device, channels_last=self.cuda)
        self.autocast = autocast_for(self.device)

    def save(self, name: str, row: dict[str, Any] | None, resumable: bool) -> Path:
        path = self.out / name
        state = resume_state(self.optimizer, self.position, self.history, self.settings, self.cuda) \
            if resumable else {}
        save_checkpoint(path, self.model, run_config(self.settings, self.data, row), **state)
        return path

    # ------------------------------------------------------------------------------ the loop

    def run(self, reporter: Reporter) -> Path:
        s = self.settings
        if self.position.epoch >= s.epochs:
            reporter.line(f"uiaa train: {self.out} already finished its {s.epochs} epochs")
            return self.out
        if self.step_net is self.net and compile_wanted(s.compile, self.device):  # --compile auto fell back
            reporter.line(f"uiaa train: torch.compile cannot run on {self.device} here "
                          f"({compile_problem(self.device)}); training eagerly")
        with StopFlag() as stop:
            for epoch in range(self.position.epoch, s.epochs):
                self.train_epoch(epoch, stop, reporter)
                self.end_epoch(epoch, reporter)
                # A signal during validation (on any rank): last.pt already resumes at the next epoch.
                if epoch + 1 < s.epochs and not self.dist.all(not stop.requested, self.device):
                    raise Interrupted(f"interrupted after epoch {epoch + 1}: saved {self.out / 'last.pt'}; "
                                      f"continue with: uiaa train --resume {self.out}")
        return self.out

    def train_epoch(self, epoch: int, stop: StopFlag, reporter: Reporter) -> None:
        s, dist, pos, data = self.settings, self.dist, self.position, self.data
        lr = epoch_lr(*self.lr, epoch, s.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = epoch_batches(len(data.train_rows), s.batch_size, s.seed, epoch, rank=dist.rank, world=dist.world)
        first = pos.step
        reporter.start_epoch(epoch, s.epochs, len(batches), first)
        self.net.train()
        started, seen_before = time.perf_counter(), pos.seen
        totals = StepTotals(readback_lag(self.device))

        def fold(keep: int) -> None:
            """Add the steps read back (all but the last ``keep``) to the position; a NaN or a stop
            flag among them ends the run, once every step taken is counted."""
            stopping = False
            while (done := totals.pop(0 if stopping else keep)) is not None:
                step, (loss_sum, seen, stop_flag) = done
                if not math.isfinite(loss_sum):
                    self.nan_stop(loss_sum, epoch, step, lr)
                pos.loss_sum, pos.seen = pos.loss_sum + loss_sum, pos.seen + int(seen)
                images_per_s = (pos.seen - seen_before) / max(time.perf_counter() - started, 1e-9)
                reporter.step(pos.mean_loss, images_per_s)  # running mean
                stopping = stopping or bool(stop_flag)
            if stopping:
                pos.seconds += time.perf_counter() - started
                path = self.save("last.pt", self.history[-1] if self.history else None, True) \
                    if dist.main else self.out / "last.pt"
                dist.barrier()
                raise Interrupted(f"interrupted at epoch {epoch + 1}, step {pos.step}: saved {path}; "
                                  f"continue with: uiaa train --resume {self.out}")

        rows_iter = data.source.batches(data.train_rows[b] for b in batches[first:])
        for step, (pixels, rows) in enumerate(rows_iter, start=first):
            if not self.usable(rows):  # its images could not be read: BatchNorm cannot train on < 2
                pos.step = step + 1
                continue
            x = self.normalise(pixels, flip_mask(len(rows), s.seed, epoch, step, dist.rank))
            y = torch.from_numpy(data.labels.targets[rows])
            y = (y.pin_memory() if self.cuda else y).to(self.device, non_blocking=True)  # overlapped on CUDA
            with self.autocast():
                out = (self.step_net if len(rows) == s.batch_size else self.net)(x)
            loss = self.loss_fn(out.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # One all-reduce per step carries the loss and the stop flag, so all ranks agree.
            stats = torch.stack([loss.detach().float() * len(rows),
                                 torch.tensor(float(len(rows)), device=self.device),
                                 torch.tensor(float(stop.step()), device=self.device)])
            dist.sum(stats)
            totals.push(step, stats)
            self.optimizer.step()
            pos.step = step + 1
            fold(totals.lag)
        fold(0)
        pos.seconds += time.perf_counter() - started
        report_failures(data.source, reporter, dist.main)
        if not pos.seen:  # a failed run (exit 1), as one without a sound epoch
            raise UiaaError(f"no training step was made: (almost) none of the {len(data.train_rows):,} training "
                            "images could be read (see the lines above; is --images the right folder?)",
                            where=at(str(s.data)), status=ExitStatus.INCOMPLETE)

    def usable(self, rows: np.ndarray) -> bool:
        """Whether a batch has the 2 images a training step needs (on every rank, under torchrun)."""
        ok = len(rows) >= 2
        if isinstance(self.data.source, CacheSource):  # a cache's images never fail
            return ok
        return self.dist.all(ok, self.device)

    def nan_stop(self, value: float, epoch: int, step: int, lr: float) -> None:
        last = self.out / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise UiaaError(f"the loss became {value} at epoch {epoch + 1}, step {step + 1} (lr {lr:.2e}): training "
                        f"stopped; {kept}. Try a lower --lr")

    def end_epoch(self, epoch: int, reporter: Reporter) -> None:
        pos = self.position
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": epoch_lr(*self.lr, epoch, self.settings.epochs),
                               "train_loss": pos.mean_loss}
        row.update(self.validate(reporter))
        row.update(images_per_s=pos.seen / max(pos.seconds, 1e-9), seconds=pos.seconds)
        self.history.append(row)
        self.trained = pos.seen
        self.position = Position(epoch + 1)
        if self.dist.main:
            write_history(self.out / "metrics.csv", self.history)
            # Only a sound epoch (finite validation) is ever best.pt: a NaN one is kept in last.pt alone.
            # best.pt first: a run killed between the two resumes this epoch, never skips its best.pt.
            if best_epoch(self.history, self.settings.select, self.validated) == len(self.history) - 1:
                self.save("best.pt", row, False)
            self.save("last.pt", row, True)
            point_latest(self.out)
            reporter.line(epoch_line(row, self.settings.epochs))
        self.dist.barrier()

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
        k = self.data.labels.targets.shape[1]
        done_a = np.concatenate(done) if done else np.zeros(0, dtype=np.int64)
        outs_a = np.concatenate(outs) if outs else np.zeros((0, k), dtype=np.float32)
        return gather_rows(self.dist, done_a, outs_a)

    def validate(self, reporter: Reporter) -> dict[str, Any]:
        data = self.data
        if not len(data.val_rows):
            return no_metrics()
        rows, outputs = self.outputs(data.val_source, data.val_rows)
        report_failures(data.val_source, reporter, self.dist.main, " of the validation images")
        if len(rows) < 2:
            return no_metrics()
        return val_metrics(outputs, rows, data.val_labels, self.loss_fn, self.activation, self.bins, self.kind)

    def no_model(self) -> UiaaError | None:
        """Why no epoch may be best.pt, as the error that ends the run (exit 1); None when one may."""
        s, history = self.settings, self.history
        if best_epoch(history, s.select, self.validated) is not None:
            return None
        losses = [r.get("val_loss") for r in history]
        if all(v is None and r.get("srcc") is None for v, r in zip(losses, history, strict=True)):
            why = (f"none of the {len(self.data.val_rows):,} validation images could be read (see the lines "
                   "above), so no epoch could be judged")
            hint = "Give readable validation images (--val, or the images missing from DATA)"
        elif any(v is not None and not math.isfinite(v) for v in losses):
            shown = ", ".join("n/a" if v is None else f"{v:.4g}" for v in losses[-3:])
            scratch = " for training from scratch (--weights none)" if s.weights == "none" else ""
            few = f"the {self.trained:,} training images read an epoch" if self.trained else "the training images"
            why = (f"the validation loss was not finite in any epoch ({shown}): the weights diverged, the "
                   f"learning rate {self.lr[0]:.2e} being too high{scratch} or {few} too few")
            hint = "Try a lower --lr, or more images"
        else:  # srcc/smooth: the loss was finite but no SRCC could be computed
            why = f"no epoch gave a validation SRCC (its scores were all alike) for --select {s.select}"
            hint = "Train longer, or choose --select last or loss"
        return UiaaError(f"no epoch gave a usable model: {why}; no best.pt was written, {self.out / 'last.pt'} "
                         f"is kept for inspection. {hint}", status=ExitStatus.INCOMPLETE)

    def withdraw(self) -> None:
        """A run that ends without best.pt is not the model ``latest`` (and so predict) should find."""
        if self.dist.main and not (self.out / "best.pt").exists():
            withdraw_latest(self.out, self.folder.previous_latest)

    def close(self) -> None:
        self.data.close()
        self.folder.close()


def train(settings: TrainSettings, inputs: Inputs | None = None) -> Path:
    """Run (or resume) a training run; returns its folder. Raises Interrupted after Ctrl-C/SIGTERM, and
    a UiaaError with status 1 when no epoch gave a sound model (no best.pt; last.pt is kept).
    ``inputs``: the data as ``inputs.check_inputs`` checked it (checked again here if None)."""
    dist = init_distributed(settings.device)
    reporter = Reporter(dist.main and not settings.quiet, settings.progress)
    trainer = None
    try:
        trainer = Trainer(settings, dist, inputs)
        if dist.main and not settings.quiet:
            s = trainer.settings
            reporter.line(f"uiaa train: {len(trainer.data.train_rows):,} training and {len(trainer.data.val_rows):,} "
                          f"validation images, {trainer.size} px, {s.arch} ({s.weights}), {trainer.kind} with "
                          f"{s.loss}, lr {trainer.lr[0]:.2e} -> {trainer.lr[1]:.2e}, weight decay "
                          f"{trainer.weight_decay:g}, batch {s.batch_size}, {s.epochs} epochs on "
                          f"{trainer.device}{f' x {dist.world} processes' if dist.on else ''} -> {trainer.out}"
                          f"{trainer.data.inputs.note()}")
        try:
            out = trainer.run(reporter)
            if dist.main and trainer.history:
                for line in summary_lines(trainer.history, trainer.settings.select, trainer.validated):
                    reporter.line(line)
            failed = trainer.no_model()
            if failed is not None:
                raise failed
        except UiaaError:
            trainer.withdraw()
            raise
        return out
    finally:
        reporter.close()
        if trainer is not None:
            trainer.close()
        dist.close()
