"""Where predict's engines run: whether ``--device`` means a GPU, the torch device, and ONNX Runtime's
execution providers.

Whether there is a GPU is asked of torch only where a GPU driver is present, so a CPU-only machine
never imports torch to learn it has none. ``pick_device`` is the one rule for ``--device``, training's too,
and ``bf16_here`` with ``autocast`` the one rule for mixed precision.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from typing import Any

from uiaa_cli.errors import UiaaError


def gpu_wanted(device: str) -> bool:
    """Whether ``device`` means a GPU: ``auto`` asks torch, but only where a GPU could be."""
    if device == "cpu":
        return False
    if device != "auto":
        return True  # cuda, cuda:N, mps (or a typo): torch's side checks it
    if not gpu_driver_present():
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or (mps is not None and mps.is_available())


def gpu_driver_present() -> bool:
    """False where torch certainly finds no GPU (importing torch to be told so costs seconds)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return sys.platform == "darwin" and platform.machine() == "arm64"
    if sys.platform.startswith("linux"):
        # The NVIDIA driver's proc entry; ROCm's kernel driver (torch.cuda on AMD GPUs).
        return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd")
    if sys.platform == "darwin":
        return platform.machine() == "arm64"  # Apple silicon: MPS
    return True  # elsewhere, ask torch


def pick_device(name: str, local_rank: int | None = None) -> Any:
    """``--device`` as a torch.device, for training and for predict's torch engine alike: ``auto``
    (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` (the process's local rank under torchrun: ``local_rank``,
    else $LOCAL_RANK, else 0), ``cuda:N`` or ``mps``."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    mps_here = mps is not None and mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_here else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UiaaError(f"--device {name}: no CUDA device is available (use --device cpu)")
        if name == "cuda":
            rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
            name = f"cuda:{rank % torch.cuda.device_count()}"
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UiaaError(f"--device {name}: expected cuda or cuda:N") from None
        if (device.index or 0) >= torch.cuda.device_count():
            raise UiaaError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    if name == "mps":
        if not mps_here:
            raise UiaaError("--device mps: MPS is not available here (use --device cpu)")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UiaaError(f"--device {name!r}: choose auto, cpu, cuda, cuda:N or mps")


def bf16_here(device: Any) -> bool:
    """Whether a network runs under bf16 autocast on ``device``: a CUDA device with bf16 (Ampere and
    later; older ones would emulate it slowly), never the CPU or MPS, where float32 is kept."""
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: Any, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """The context a forward pass runs in, for training and predict alike: bf16 autocast on ``device``
    when ``bf16``, else nothing at all. (The CPU's bf16 autocast runs the same path: the tests check
    bf16 scores against float32 with it.)"""
    if not bf16:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16)


def onnx_providers(device: str, available: list[str]) -> tuple[str, list[Any]]:
    """ONNX Runtime's execution provider for ``device``: the CPU, or CUDA with onnxruntime-gpu."""
    if device in ("auto", "cpu"):
        return "cpu", ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise UiaaError(f"--device {device} with --engine onnx needs onnxruntime-gpu; or use --engine torch")
        index = device.partition(":")[2] or os.environ.get("LOCAL_RANK", "0")
        if not index.isdigit():
            raise UiaaError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
        return f"cuda:{index}", [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise UiaaError(f"--device {device}: the ONNX engine runs on cpu (or cuda); use --engine torch")
