"""``uiaa convert model.pt model.ts|model.onnx``: a checkpoint for deployment, preprocessing included.

The exported module is ``models.Scorer``, the very module ``uiaa predict`` runs (its ONNX engine
runs this export), so an exported model and predict give the same scores. Its contract:

- input ``pixels``: ``(N, 3, S, S)`` RGB, values 0..255, ``S`` the checkpoint's size. TorchScript
  takes uint8 or float; ONNX takes uint8. Make it as predict does: apply the EXIF orientation,
  convert to RGB, warp-resize the whole image to S x S (no crop; Pillow's bilinear filter),
  and put the channels first. Normalisation (ImageNet mean/std) happens inside the model.
- outputs ``score`` ``(N,)`` and ``probs`` ``(N, K)``: the memberships over the K target sets
  (softmax; raw outputs for models trained with mse/huber), and the score (docs/maths.md, "Model head
  and score").

The checkpoint's config (size, bins, targets, kind, mean, std) travels with the model: as
``uiaa_config.json`` in the TorchScript archive (``torch.jit.load(f, _extra_files=...)``) and as
metadata ``uiaa_config`` in the ONNX file (with ``uiaa_source``, the checkpoint's content hash).

torch is imported inside the functions: ``graphs`` and ``engines`` read this module's names without it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.tables.outputs import atomic_output

if TYPE_CHECKING:
    import torch

    from uiaa_cli.models.networks import Scorer

EXPORT_SUFFIXES = {".ts": "torchscript", ".torchscript": "torchscript", ".onnx": "onnx"}
CONFIG_NAME = "uiaa_config.json"
CONFIG_KEY = "uiaa_config"  # ONNX metadata: the checkpoint's config (JSON)
SOURCE_KEY = "uiaa_source"  # ONNX metadata: the checkpoint it was exported from (JSON: sha256, stat)


def export_format(path: str) -> str:
    fmt = EXPORT_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise UiaaError("export a checkpoint to .ts (TorchScript) or .onnx", where=at(path))
    return fmt


def export_model(checkpoint: str | os.PathLike, target: str | os.PathLike, fmt: str | None = None,
                 loaded: Callable[[], None] | None = None) -> dict[str, Any]:
    """Export ``checkpoint`` to ``target`` (.ts or .onnx, or ``fmt``) atomically; returns its config.

    ``loaded`` is called once the checkpoint has loaded, before the export's work (a bad checkpoint
    is then one error line, not a note that an export began followed by the error)."""
    import torch

    from uiaa_cli.models.networks import load_scorer

    fmt = fmt or export_format(str(target))
    if fmt == "onnx":
        require_onnx()
    source = checkpoint_source(checkpoint)
    scorer, config = load_scorer(checkpoint)
    if checkpoint_source(checkpoint) != source:  # the hash must name the weights exported, not newer ones
        raise UiaaError("the checkpoint changed while it was being exported; try again", where=at(str(checkpoint)))
    if loaded is not None:
        loaded()
    example = torch.zeros((2, 3, int(config["size"]), int(config["size"])), dtype=torch.uint8)
    with atomic_output(target) as tmp:
        if fmt == "torchscript":
            to_torchscript(scorer, config, example, tmp)
        else:
            to_onnx(scorer, config, example, tmp, {SOURCE_KEY: json.dumps(source)})
    return config


def checkpoint_source(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a checkpoint's content: its SHA-256, and its file's stat (size, mtime, ctime,
    inode), which lets a reader skip re-hashing a file that has not been touched since."""
    from uiaa_cli.tables.formats import file_sha256

    with open(path, "rb") as f:
        before = os.fstat(f.fileno())  # the stat of the very file hashed, even if renamed over meanwhile
        return {"sha256": file_sha256(f), "stat": file_stat(before)}


def file_stat(st: os.stat_result) -> list[int]:
    """A file's identity and last change: any rewrite, rename or copy changes it (ctime cannot be set)."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def to_torchscript(scorer: Scorer, config: dict[str, Any], example: torch.Tensor, path: os.PathLike) -> None:
    import torch

    # TorchScript is deprecated in favour of torch.export, but it is still what C++ (libtorch) and
    # mobile runtimes load; its FutureWarnings would only alarm the user.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(scorer, example)  # the network has no data-dependent control flow
        torch.jit.save(traced, str(path), _extra_files={CONFIG_NAME: json.dumps(config)})


class ExportUnavailable(UiaaError):
    """The ONNX export cannot be made here (a package missing, an operation the exporter lacks), as
    opposed to a bad checkpoint: predict's ``auto`` engine then runs torch instead."""


def require_onnx() -> None:
    """A one-line error unless the exporter's packages are installed."""
    missing = onnx_export_missing()
    if missing:
        raise ExportUnavailable(f"ONNX export needs torch and the packages onnx and onnxscript ({missing}): "
                        "pip install 'uiaa[onnx]'")


def onnx_export_missing() -> str | None:
    """Why an ONNX export cannot run here (a missing package), or None."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
        import torch  # noqa: F401 - the exporter; imported by the export right after anyway
    except ImportError as e:
        return str(e) or type(e).__name__
    return None


def to_onnx(scorer: Scorer, config: dict[str, Any], example: torch.Tensor, path: os.PathLike,
            metadata: dict[str, str] | None = None) -> None:
    import onnx
    import torch

    # The exporter reports its progress (and its own warnings) with print: people need none of it,
    # and stdout is for data.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), \
            warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript-based exporter: 4-5x faster than the dynamo one for these networks (an
            # export is what the first ONNX predict of a checkpoint waits for), the same graph to 1e-7.
            # torch deprecates it, so where it fails or is gone the dynamo exporter takes over.
            buffer = io.BytesIO()
            torch.onnx.export(scorer, (example,), buffer, input_names=["pixels"], output_names=["score", "probs"],
                              dynamic_axes={"pixels": {0: "batch"}, "score": {0: "batch"}, "probs": {0: "batch"}},
                              dynamo=False)
            model = onnx.load_from_string(buffer.getvalue())
        except Exception:
            try:
                program = torch.onnx.export(
                    scorer, (example,), input_names=["pixels"], output_names=["score", "probs"],
                    dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
                )
            except Exception as e:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise ExportUnavailable(f"the ONNX export failed: {type(e).__name__}: {reason}") from e
            model = program.model_proto
    for key, value in {CONFIG_KEY: json.dumps(config), **(metadata or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """An exported TorchScript model and its config."""
    import torch

    extra = {CONFIG_NAME: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[CONFIG_NAME])
