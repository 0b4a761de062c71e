"""Where and how a run executes: its device, its place among torchrun's processes, and stopping.

Under ``torchrun`` (``WORLD_SIZE > 1``) every rank joins one process group (NCCL on CUDA, gloo on
CPU); ``Dist`` knows the rank and carries the few collective calls the loop makes (one all-reduce a
step, the gathering of validation outputs, barriers), each a no-op in a single process.
``StopFlag`` turns Ctrl-C and SIGTERM into a flag the loop checks after each step, so every rank
stops at the same step and leaves a resumable checkpoint (``Interrupted``, exit status 130);
``StepTotals`` reads each step's loss and stop flag back to the host (on CUDA a step late).
At the end, the speed paths of CUDA (``--compile``, the fused SGD step, the loader's processes,
``--decode gpu``), each of which leaves the CPU path as it was.
"""

from __future__ import annotations

import functools
import os
import signal
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from uiaa_cli.errors import UiaaError
from uiaa_cli.models.devices import autocast, bf16_here
from uiaa_cli.training.settings import COMPILE_CHOICES, DECODE_CHOICES

STOP_AFTER_STEPS = "UIAA_STOP_AFTER_STEPS"  # test hook: behave as if Ctrl-C came after N steps
READBACK_LAG = "UIAA_READBACK_LAG"  # test hook: read each step's totals this many steps late (CUDA: 1)


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


def autocast_for(device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    """The context the forward pass runs in (models/devices.py's rule, as predict's): bf16 autocast on
    a CUDA device that has it, else none."""
    bf16 = bf16_here(device)
    return lambda: autocast(device, bf16)


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


class StepTotals:
    """Each step's all-reduced ``[loss × images, images, stop flag]``, read on the host ``lag`` steps late.

    Reading a CUDA tensor waits until the device has run every kernel queued before it, so a read
    each step keeps the host from queueing step n+1 while step n runs (NVIDIA's ResNet-50 reads its
    loss only every print_freq steps). On CUDA the totals are copied to pinned memory as they are
    made and read a step later; on the CPU a read costs nothing and ``lag`` is 0. So on CUDA a NaN
    or a stop is seen one step late, on every rank alike.
    """

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.pending: deque[tuple[int, torch.Tensor, Any]] = deque()

    def push(self, step: int, totals: torch.Tensor) -> None:
        event = None
        if totals.is_cuda:
            stream = torch.cuda.current_stream(totals.device)  # --device cuda:1 is not the current device
            totals = totals.to("cpu", non_blocking=True)  # a non-blocking copy lands in pinned memory
            event = torch.cuda.Event()
            event.record(stream)
        self.pending.append((step, totals, event))

    def pop(self, keep: int) -> tuple[int, list[float]] | None:
        """The oldest step's ``(step, totals)`` while more than ``keep`` are pending, else None."""
        if len(self.pending) <= keep:
            return None
        step, totals, event = self.pending.popleft()
        if event is not None:
            event.synchronize()
        return step, totals.tolist()


def readback_lag(device: torch.device) -> int:
    limit = os.environ.get(READBACK_LAG)
    return int(limit) if limit else int(device.type == "cuda")


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


# ------------------------------------------------------------------------------- speed on CUDA
# Each of these leaves the CPU path exactly as it was (the suite's figures are bit-identical there);
# what they do on CUDA is measured by benchmarks/bench_gpu.py.

MAX_WORKERS = 32  # loader processes: beyond this the main process, not decoding, is the limit


def default_workers() -> int:
    """Loader processes when ``--workers`` is not given: every core this process may use (at most
    MAX_WORKERS). A GPU at ~1,300 images/s of 384 px JPEGs needs 4-5 cores of Pillow decoding;
    the rest wait, idle, once the prefetch queue is full."""
    from uiaa_cli.pixels.workers import available_cores

    return min(MAX_WORKERS, available_cores())


def compile_wanted(setting: str, device: torch.device) -> bool:
    """``--compile``: auto is on for CUDA only (where fusing the network's small kernels pays: on
    the CPU the compile itself would cost more than a short run gains, and needs a C++ compiler)."""
    if setting not in COMPILE_CHOICES:
        raise UiaaError(f"--compile {setting!r}: choose auto, on or off")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def compiled(model: nn.Module, device: torch.device, required: bool = True) -> nn.Module:
    """``torch.compile`` of the network for training steps (inductor, default mode: no CUDA graphs,
    whose captured memory would hold the loader's pinned batches; static shapes: the short last
    batch steps eagerly). Its parameters are the model's, so checkpoints and validation keep using
    the uncompiled module. Where compiling cannot work (no C compiler or Triton, say), the model
    itself, or with ``required`` (``--compile on``) one line saying why."""
    problem = compile_problem(device)
    if problem is None:
        return torch.compile(model, dynamic=False)  # type: ignore[return-value]
    if required:
        raise UiaaError(f"--compile on: torch.compile cannot run on {device} here ({problem}); use --compile off")
    return model


@functools.cache
def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` fails on ``device`` (its first line), found by compiling and running a
    tiny function there; None when it works. It costs a few seconds, once per process."""
    try:
        torch.compile(lambda t: torch.relu(t) + 1, dynamic=False)(torch.ones(8, device=device))
    except Exception as e:  # noqa: BLE001 - a missing compiler, Triton, Python.h: each its own type
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return None


def make_optimizer(params: Any, *, lr: float, momentum: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """SGD with momentum; on CUDA its fused kernel (one launch updates every parameter, where the
    default for-each path launches a few per tensor group). On the CPU, torch's default path."""
    if device.type == "cuda":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def fit_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """After ``load_state_dict``: the implementation for this device, not the one the checkpoint's
    device used (a state saved on CUDA carries ``fused=True`` into a CPU run otherwise)."""
    for group in optimizer.param_groups:
        group["fused"] = True if device.type == "cuda" else None
        group["foreach"] = None


def decode_device(setting: str, device: torch.device, encoded_jpeg: bool) -> torch.device | None:
    """``--decode``: where a jpeg cache's images are decoded. ``cpu`` (and ``auto``, until a device
    measures torchvision's nvJPEG decoding faster than the worker processes: bench_gpu.py row c):
    None, Pillow in the loader's processes. ``gpu``: the training device, a batch per call of
    ``torchvision.io.decode_jpeg`` (its pixels differ from Pillow's by the decoders' rounding)."""
    if setting not in DECODE_CHOICES:
        raise UiaaError(f"--decode {setting!r}: choose auto, cpu or gpu")
    if setting != "gpu":
        return None
    if device.type != "cuda":
        raise UiaaError(f"--decode gpu decodes on a CUDA device; this run is on {device} (use --decode cpu)")
    if not encoded_jpeg:
        raise UiaaError("--decode gpu decodes a jpeg cache ('uiaa cache --store jpeg', the default); this data "
                        "is not one (use --decode cpu)")
    return device
