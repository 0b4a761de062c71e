"""Where and how a run executes: its device, its place among torchrun's processes, and stopping.

Under ``torchrun`` (``WORLD_SIZE > 1``) every rank joins one process group (NCCL on CUDA, gloo on
CPU); ``Dist`` knows the rank and carries the few collective calls the loop makes (one all-reduce a
step, the gathering of validation outputs, barriers), each a no-op in a single process.
``StopFlag`` turns Ctrl-C and SIGTERM into a flag the loop checks after each step, so every rank
stops at the same step and leaves a resumable checkpoint (``Interrupted``, exit status 130).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from uiaa_cli.errors import UiaaError

STOP_AFTER_STEPS = "UIAA_STOP_AFTER_STEPS"  # test hook: behave as if Ctrl-C came after N steps


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: a resumable checkpoint was written (exit status 130)."""


@dataclass
class Dist:
    """This process's place among torchrun's (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1

    def sum(self, values: torch.Tensor) -> None:
        """Sum ``values`` over the ranks, in place."""
        if self.on:
            import torch.distributed as td

            td.all_reduce(values)

    def all(self, ok: bool, device: torch.device) -> bool:
        """Whether ``ok`` holds on every rank."""
        if not self.on:
            return ok
        import torch.distributed as td

        flag = torch.tensor(float(ok), device=device)
        td.all_reduce(flag, op=td.ReduceOp.MIN)
        return bool(flag.item())

    def gather(self, part: Any) -> list[Any]:
        """Every rank's ``part``, in rank order, on every rank."""
        if not self.on:
            return [part]
        import torch.distributed as td

        parts: list[Any] = [None] * self.world
        td.all_gather_object(parts, part)
        return parts

    def from_main(self, value: str) -> str:
        """Rank 0's ``value``, on every rank."""
        if not self.on:
            return value
        import torch.distributed as td

        box = [value]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as a training step calls it: inside DistributedDataParallel under torchrun."""
        if not self.on:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def barrier(self) -> None:
        if self.on:
            import torch.distributed as td

            td.barrier()

    def close(self) -> None:
        if self.on:
            import torch.distributed as td

            td.destroy_process_group()


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


def autocast_for(device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    """The context the forward pass runs in: bf16 autocast on a CUDA device that has it, else none."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


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
