"""``uiaa convert model.pt model.ts|model.onnx``: a checkpoint for deployment, preprocessing included.

The exported module is ``inference.Scorer``, the very module ``uiaa predict`` runs, so an exported
model and predict give the same scores. Its contract:

- input ``pixels``: ``(N, 3, S, S)`` RGB, values 0..255, ``S`` the checkpoint's size. TorchScript
  takes uint8 or float; ONNX takes uint8. Make it as predict does: apply the EXIF orientation,
  convert to RGB, warp-resize the whole image to S x S (no crop; Pillow's bilinear filter),
  and put the channels first. Normalisation (ImageNet mean/std) happens inside the model.
- outputs ``score`` ``(N,)`` and ``probs`` ``(N, K)``: the memberships over the K target sets
  (softmax; raw outputs for models trained with mse/huber), and the score of SPEC §1.

The checkpoint's config (size, bins, targets, kind, mean, std) travels with the model: as
``uiaa_config.json`` in the TorchScript archive (``torch.jit.load(f, _extra_files=...)``) and as
metadata ``uiaa_config`` in the ONNX file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.inference import Scorer, load_scorer
from uiaa_cli.tables import atomic_path

EXPORT_SUFFIXES = {".ts": "torchscript", ".torchscript": "torchscript", ".onnx": "onnx"}
CONFIG_NAME = "uiaa_config.json"


def export_format(path: str) -> str:
    fmt = EXPORT_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise UiaaError("export a checkpoint to .ts (TorchScript) or .onnx", where=at(path))
    return fmt


def export_model(checkpoint: str, target: str) -> dict[str, Any]:
    """Export ``checkpoint`` to ``target`` (.ts or .onnx) atomically; returns the model's config."""
    fmt = export_format(target)
    if fmt == "onnx":
        require_onnx()
    scorer, config = load_scorer(checkpoint)
    example = torch.zeros((2, 3, int(config["size"]), int(config["size"])), dtype=torch.uint8)
    with atomic_path(target) as tmp:
        if fmt == "torchscript":
            to_torchscript(scorer, config, example, tmp)
        else:
            to_onnx(scorer, config, example, tmp)
    return config


def to_torchscript(scorer: Scorer, config: dict[str, Any], example: torch.Tensor, path: os.PathLike) -> None:
    # TorchScript is deprecated in favour of torch.export, but it is still what C++ (libtorch) and
    # mobile runtimes load; its FutureWarnings would only alarm the user.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(scorer, example)  # the network has no data-dependent control flow
        torch.jit.save(traced, str(path), _extra_files={CONFIG_NAME: json.dumps(config)})


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError as e:
        raise UiaaError(f"ONNX export needs the optional packages onnx and onnxscript ({e}): "
                        "pip install 'uiaa[onnx]'") from None


def to_onnx(scorer: Scorer, config: dict[str, Any], example: torch.Tensor, path: os.PathLike) -> None:
    import onnx

    # The exporter reports its progress on stdout; keep stdout for data.
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        program = torch.onnx.export(
            scorer, (example,), input_names=["pixels"], output_names=["score", "probs"],
            dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
        )
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = "uiaa_config", json.dumps(config)
    onnx.save(model, str(path))


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """An exported TorchScript model and its config."""
    extra = {CONFIG_NAME: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[CONFIG_NAME])
