"""Where predict's engines run: whether ``--device`` means a GPU, the torch device, and ONNX Runtime's
execution providers.

Whether there is a GPU is asked of torch only where a GPU driver is present, so a CPU-only machine
never imports torch to learn it has none. (Training chooses its device in ``training.runtime``.)
"""

from __future__ import annotations

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


def pick_device(name: str) -> Any:
    """``auto``: CUDA (this process's local rank under torchrun), else MPS, else CPU; a torch.device."""
    import torch

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
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UiaaError(f"--device {name}: MPS is not available on this machine")
    return device


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
