"""Model engines for ``uiaa predict``: a checkpoint (or an exported graph) as one call, pixels to scores.

``open_engine`` is the one entry point: the model (``model_files.find_model``), the engine, the
device and the precision. An engine takes a batch of decoded images, uint8 ``(B, S, S, 3)`` RGB
warp-resized to the model's size S (``images.decode_image``), and returns the score ``(B,)`` and the
outputs ``(B, K)``, float64. Both engines run the same module, ``models.Scorer`` (normalisation
inside, then the network and its activation), so their scores agree within 1e-4; the score is
computed from the outputs here, in float64, by ``metrics.predicted_score``, so it is the same
function of the outputs everywhere.

- ``onnx``: ONNX Runtime on the checkpoint's exported graph, exported once and kept
  (``graphs.exported_graph``: beside the checkpoint, else in the user's cache folder). Running an
  exported graph imports neither torch nor torchvision: start-up is ONNX Runtime's. ``-m model.onnx``
  (from ``uiaa convert``, which embeds the config as metadata ``uiaa_config``) runs as it is. ONNX
  Runtime's fully optimised form of a graph is kept in the user cache too (``graphs.optimised_graph``)
  and loaded from then on.
- ``torch``: the checkpoint in torch eager. On CUDA the network runs under bf16 autocast with
  channels_last inputs, and the activation and score in float32 (a bf16 score is off by ~0.01).
- ``auto``: ONNX Runtime on CPU, torch on CUDA/MPS (``devices.gpu_wanted``: a CPU-only machine never
  imports torch to learn it has none). Without onnxruntime, or without the exporter's packages and no
  graph exported yet, auto runs torch and says so in one line.
- ``precision="int8"``, or an int8 ``.onnx``: ONNX Runtime on the CPU, the checkpoint quantized once
  and kept as its fp32 graph is (``graphs.quantized_graph``, ``quantize``).

See docs/engines.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.metrics import predicted_score
from uiaa_cli.models.devices import autocast, bf16_here, gpu_wanted, onnx_providers, pick_device
from uiaa_cli.models.export import CONFIG_KEY, SOURCE_KEY, ExportUnavailable
from uiaa_cli.models.graphs import (
    exported_graph,
    keep_optimised,
    model_precision,
    optimised_graph,
    quantized_graph,
    stderr_note,
    writable_folder,
)
from uiaa_cli.models.model_files import find_model, is_onnx
from uiaa_cli.pixels.workers import available_cores

if TYPE_CHECKING:
    from uiaa_cli.models.calibration import Calibration

ENGINES = ("auto", "onnx", "torch")
PRECISIONS = ("fp32", "int8")


class Engine(Protocol):
    name: str  # "onnx" or "torch"
    config: dict  # the checkpoint's config: size, bins, targets, kind, mean, std, activation, ...
    model: str  # the model file actually run (the exported graph for a checkpoint on the ONNX engine)
    device: str  # "cpu", "cuda:0", "mps", ...

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S, 3) RGB, S = config['size'] -> score float64 (B,), probs float64 (B, K)."""
        ...


def open_engine(model: str | None, engine: str = "auto", device: str = "auto", *, precision: str | None = None,
                calibration: Calibration | None = None, threads: int | None = None,
                note: Callable[[str], None] = stderr_note) -> Engine:
    """The model ``find_model(model)`` ready to score, on ``engine`` and ``device``.

    ``precision``: None (the model's own), ``fp32``, or ``int8``: an int8 ONNX model
    (``-m model-int8.onnx``) or a checkpoint quantized once (``--precision int8``) runs on the CPU
    in ONNX Runtime. ``calibration`` gives the images a checkpoint is calibrated on when it has no
    int8 graph yet. ``threads``: the model's CPU threads (default: the cores this process may use).
    ``note`` gets the lines for people (an export under way, a fallback to torch).
    """
    if engine not in ENGINES:
        raise UiaaError(f"unknown engine {engine!r}; use auto, onnx or torch")
    if precision not in (None, *PRECISIONS):
        raise UiaaError(f"unknown precision {precision!r}; use fp32 or int8")
    if threads is not None and threads < 1:
        raise UiaaError("--threads must be at least 1")
    path = find_model(model, note=note)
    stored = model_precision(path) if is_onnx(path) else "fp32"
    if precision is not None and is_onnx(path) and precision != stored:
        raise UiaaError(f"--precision {precision}: this is an {stored} ONNX model; "
                        + ("give its checkpoint, or quantize it with 'uiaa convert MODEL.onnx OUT.onnx --int8 "
                           "--calibrate DATA'" if precision == "int8" else "give the fp32 model or its checkpoint"),
                        where=at(str(path)))
    if (precision or stored) == "int8":
        from uiaa_cli.models.quantize import check_int8_device

        check_int8_device(device, engine, requested=precision == "int8", note=note)
        return OnnxEngine(path if is_onnx(path) else quantized_graph(path, calibration, note), "cpu", threads)
    if is_onnx(path):
        if engine == "torch":
            raise UiaaError("an ONNX model runs in ONNX Runtime: use --engine onnx (or auto), or give the "
                            "checkpoint it was exported from", where=at(str(path)))
        return OnnxEngine(path, device, threads)
    if engine == "torch" or (engine == "auto" and gpu_wanted(device)):
        return TorchEngine(path, device, threads)
    why_not = onnx_runtime_missing()
    if why_not is None:
        try:
            graph = exported_graph(path, note)
        except ExportUnavailable as e:  # a bad checkpoint is not one: its error is the command's
            if engine == "onnx":
                raise
            why_not = str(e)
        else:
            return OnnxEngine(graph, device, threads, checkpoint=path)
    elif engine == "onnx":
        raise UiaaError(f"--engine onnx needs onnxruntime ({why_not}): pip install onnxruntime")
    note(f"running the model in torch: {why_not}")
    return TorchEngine(path, device, threads)


# ---------------------------------------------------------------------------------- ONNX Runtime


def onnx_runtime_missing() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnxruntime is not installed ({e})"
    return None


class OnnxEngine:
    """An ONNX graph with uiaa's config in its metadata, run by ONNX Runtime."""

    name = "onnx"

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None, *,
                 checkpoint: Path | None = None) -> None:
        import onnxruntime as ort

        self.model = str(path)
        self.device, providers = onnx_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.log_severity_level = 3  # errors only: ORT's warnings are for its developers
        optimised = optimised_graph(path, ort.__version__) if self.device == "cpu" else None
        self.session = onnx_session(ort, path, options, providers, optimised)
        self.config = graph_config(self.session, path)
        self.source = json.loads(self.session.get_modelmeta().custom_metadata_map.get(SOURCE_KEY) or "null")
        self.checkpoint = checkpoint
        first = self.session.get_inputs()[0]
        self.input = first.name
        self.input_type = np.float32 if first.type == "tensor(float)" else np.uint8
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "probs" if "probs" in outputs else outputs[-1]
        self.bins = np.asarray(self.config["bins"], dtype=np.float64)
        self.outputs = len(self.config["targets"])

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(pixels):
            return np.zeros(0), np.zeros((0, self.outputs))
        x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=self.input_type)  # the graph's NCHW
        (probs,) = self.session.run([self.output], {self.input: x})
        probs = probs.astype(np.float64)
        return predicted_score(probs, self.bins)[0], probs


def onnx_session(ort: Any, path: Path, options: Any, providers: list[Any], optimised: Path | None) -> Any:
    """ONNX Runtime's session of ``path``, from its kept ``optimised`` form where there is one.

    Every optimisation (ORT_ENABLE_ALL: fused convolutions in the CPU's blocked layout, faster than
    EXTENDED) costs time and memory to load (benchmarks/README.md has the figures). So the optimised
    graph is kept for this machine (the layout depends on the CPU) in the user cache and later runs
    load that, with the cheap optimisations only.
    """
    if optimised is not None and optimised.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        try:
            return ort.InferenceSession(str(optimised), options, providers=providers)
        except Exception:  # damaged: made again from the graph below
            optimised.unlink(missing_ok=True)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    saving = None
    if optimised is not None and writable_folder(optimised.parent):
        saving = optimised.with_name(f".{optimised.name}.{os.getpid()}.part")
        options.optimized_model_filepath = str(saving)
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile, ...)
        if saving is not None:
            saving.unlink(missing_ok=True)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UiaaError(f"not a readable ONNX model ({reason})", where=at(str(path))) from None
    if saving is not None:
        keep_optimised(saving, optimised)
    return session


def graph_config(session: Any, path: Path) -> dict[str, Any]:
    """The uiaa config embedded in an ONNX graph's metadata, checked enough to be used."""
    text = session.get_modelmeta().custom_metadata_map.get(CONFIG_KEY)
    if not text:
        raise UiaaError(f"an ONNX model without uiaa's config (metadata {CONFIG_KEY}); make one with "
                        "'uiaa convert model.pt model.onnx'", where=at(str(path)))
    try:
        config = json.loads(text)
        size, bins, targets = int(config["size"]), config["bins"], config["targets"]
    except (ValueError, KeyError, TypeError):
        raise UiaaError(f"the ONNX model's {CONFIG_KEY} metadata is not a uiaa config", where=at(str(path))) from None
    if size < 1 or not bins or not targets:
        raise UiaaError(f"the ONNX model's {CONFIG_KEY} metadata is not a uiaa config", where=at(str(path)))
    return config


# ------------------------------------------------------------------------------------------- torch


class TorchEngine:
    """The checkpoint in torch eager: bf16 autocast (where the GPU has bf16) and channels_last on
    CUDA, float32 on CPU and MPS."""

    name = "torch"

    def __init__(self, checkpoint: Path, device: str = "auto", threads: int | None = None) -> None:
        try:
            import torch
        except ImportError as e:
            raise UiaaError(f"the torch engine needs torch ({e}); or run an exported .onnx model") from None

        from uiaa_cli.models.networks import load_scorer

        dev = pick_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        scorer, self.config = load_scorer(checkpoint)
        self.model, self.device, self.torch_device = str(checkpoint), str(dev), dev
        # channels_last suits cuDNN (and the tensor cores' bf16); on CPU, NCHW as training uses there
        # (benchmarks/bench_predict.py --layouts compares the two).
        self.layout = torch.contiguous_format if dev.type == "cpu" else torch.channels_last
        self.scorer = scorer.to(dev, memory_format=self.layout)
        self.bf16 = bf16_here(dev)  # float32 elsewhere
        self.bins = np.asarray(self.config["bins"], dtype=np.float64)
        self.outputs = len(self.config["targets"])

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if not len(pixels):
            return np.zeros(0), np.zeros((0, self.outputs))
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.torch_device)
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=self.layout)  # NHWC is channels_last already
        with torch.inference_mode():
            with autocast(self.torch_device, self.bf16):
                out = self.scorer.model(self.scorer.normalise(x))
            probs = self.scorer.activate(out.float())  # outside autocast: the softmax in float32
        probs = probs.cpu().numpy().astype(np.float64)
        return predicted_score(probs, self.bins)[0], probs
