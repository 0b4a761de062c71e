"""Model engines for ``uiaa predict``: a checkpoint (or an exported graph) as one call, pixels to scores.

An engine takes a batch of decoded images, uint8 ``(B, S, S, 3)`` RGB warp-resized to the model's
size S (``images.decode_image``), and returns the score ``(B,)`` and the outputs ``(B, K)``, float64.
Both engines run the same module, ``models.Scorer`` (normalisation inside, then the network and its
activation), so their scores agree within 1e-4; the score is computed from the outputs here, in
float64, by ``metrics.predicted_score``, so it is the same function of the outputs everywhere.

- ``onnx``: ONNX Runtime on the checkpoint's exported graph. A checkpoint is exported once (that
  needs torch, onnx and onnxscript) and the graph is kept beside it as ``.NAME.onnx`` (``best.pt``:
  ``.best.pt.onnx``), or, when that folder is read-only, in the user's cache folder
  (``$XDG_CACHE_HOME/uiaa/onnx`` or ``~/.cache/uiaa/onnx``) named by the checkpoint's SHA-256. The
  graph records the checkpoint's hash (metadata ``uiaa_source``) and is reused only while it matches,
  so a retrained ``best.pt`` is exported again. Running an exported graph imports neither torch nor
  torchvision: start-up is ONNX Runtime's. ``-m model.onnx`` (from ``uiaa convert``, which embeds
  the config as metadata ``uiaa_config``) runs as it is. ONNX Runtime's fully optimised form of a
  graph, which depends on the CPU, is kept in the user cache (``.../uiaa/optimised``) and loaded
  from then on: loading it costs about half the time and memory of optimising again.
- ``torch``: the checkpoint in torch eager. On CUDA the network runs under bf16 autocast with
  channels_last inputs, and the activation and score in float32 (a bf16 score is off by ~0.01).
- ``auto``: ONNX Runtime on CPU, torch on CUDA/MPS. Whether there is a GPU is asked of torch only
  where a GPU driver is present, so a CPU-only machine never imports torch to learn it has none.
  Without onnxruntime, or without the exporter's packages and no graph exported yet, auto runs torch
  and says so in one line.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.metrics import predicted_score
from uiaa_cli.models import export
from uiaa_cli.models.export import CONFIG_KEY, SOURCE_KEY, ExportUnavailable, checkpoint_source, file_stat
from uiaa_cli.pixels.workers import available_cores

ENGINES = ("auto", "onnx", "torch")
NO_MODEL = ("no model: give --model FILE, set UIAA_MODEL, or train one with "
            "'uiaa train LABELS-OR-CACHE' (it writes runs/<name>/best.pt, which predict then finds)")


class Engine(Protocol):
    name: str  # "onnx" or "torch"
    config: dict  # the checkpoint's config: size, bins, targets, kind, mean, std, activation, ...
    model: str  # the model file actually run (the exported graph for a checkpoint on the ONNX engine)
    device: str  # "cpu", "cuda:0", "mps", ...

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S, 3) RGB, S = config['size'] -> score float64 (B,), probs float64 (B, K)."""
        ...


def stderr_note(message: str) -> None:
    print(f"uiaa predict: {message}", file=sys.stderr, flush=True)


def open_engine(model: str | None, engine: str = "auto", device: str = "auto", *, threads: int | None = None,
                note: Callable[[str], None] = stderr_note) -> Engine:
    """The model ``find_model(model)`` ready to score, on ``engine`` and ``device``.

    ``threads``: the model's CPU threads (default: the cores this process may use). ``note`` gets the
    lines for people (an export under way, a fallback to torch).
    """
    if engine not in ENGINES:
        raise UiaaError(f"unknown engine {engine!r}; use auto, onnx or torch")
    if threads is not None and threads < 1:
        raise UiaaError("--threads must be at least 1")
    path = find_model(model)
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


# ------------------------------------------------------------------------------ finding the model


def find_model(model: str | None, runs: Path = Path("runs")) -> Path:
    """``--model``, else ``$UIAA_MODEL``, else the newest run under ``./runs``.

    A run folder stands for its ``best.pt`` (else ``last.pt``: training was interrupted). The newest
    run is the one ``runs/latest`` points at ('uiaa train' keeps it up to date: a symlink, or a text
    file naming the run), else the run with the newest checkpoint.
    """
    given = model or os.environ.get("UIAA_MODEL") or None
    if given:
        path = Path(given)
        if path.is_dir():
            checkpoint = run_checkpoint(path)
            if checkpoint is None:
                raise UiaaError("no best.pt or last.pt in this folder", where=at(str(path)))
            return checkpoint
        if not path.is_file():
            raise UiaaError("no such model file" + ("" if model else " (from $UIAA_MODEL)"), where=at(str(path)))
        return path
    latest = runs / "latest"
    if latest.is_file():  # a text file naming the run
        latest = runs / latest.read_text().strip()
    if latest.is_dir() and run_checkpoint(latest) is not None:
        return run_checkpoint(latest)
    candidates = [c for c in map(run_checkpoint, runs.iterdir() if runs.is_dir() else []) if c]
    if not candidates:
        raise UiaaError(NO_MODEL)
    return max(candidates, key=lambda p: p.stat().st_mtime)


def run_checkpoint(folder: Path) -> Path | None:
    """A run folder's best.pt, else its last.pt, else None."""
    for name in ("best.pt", "last.pt"):
        if (folder / name).is_file():
            return folder / name
    return None


def is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


# ------------------------------------------------------------------------------ choosing a device


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
        # Every optimisation (ORT_ENABLE_ALL: fused convolutions in the CPU's blocked layout, ~1.5x
        # the images/s of EXTENDED), which costs ~0.3 s and ~140 MB more to load a ResNet-50. So the
        # optimised graph is kept for this machine (the layout depends on the CPU) in the user cache
        # and later runs load that, with the cheap optimisations only.
        optimised = optimised_graph(path, ort.__version__) if self.device == "cpu" else None
        if optimised is not None and optimised.is_file():
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            try:
                self.session = ort.InferenceSession(str(optimised), options, providers=providers)
            except Exception:  # damaged: made again from the graph below
                optimised.unlink(missing_ok=True)
        if not hasattr(self, "session"):
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            saving = None
            if optimised is not None and writable_folder(optimised.parent):
                saving = optimised.with_name(f".{optimised.name}.{os.getpid()}.part")
                options.optimized_model_filepath = str(saving)
            try:
                self.session = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile, ...)
                if saving is not None:
                    saving.unlink(missing_ok=True)
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                raise UiaaError(f"not a readable ONNX model ({reason})", where=at(str(path))) from None
            if saving is not None:
                keep_optimised(saving, optimised)
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


def optimised_graph(graph: Path, runtime: str) -> Path | None:
    """Where ``graph`` optimised by ONNX Runtime for this CPU is kept: the user cache, named by the
    graph's path (``<path-hash>-``) and by its file's stat, the runtime's version and the CPU's
    feature flags, so any change to one of them makes another name. None where the CPU is unknown."""
    import hashlib

    flags = cpu_flags()
    if flags is None:
        return None
    try:
        real = os.path.realpath(graph)
        identity = [file_stat(os.stat(real)), runtime, platform.machine(), flags]
    except OSError:
        return None
    where = hashlib.sha256(real.encode()).hexdigest()[:16]
    what = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return cache_folder().parent / "optimised" / f"{where}-{what}.onnx"


def cpu_flags() -> str | None:
    """The CPU's feature flags (Linux: /proc/cpuinfo), which decide ONNX Runtime's kernels and layout."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(set(line.split(":", 1)[1].split())))
    except OSError:
        pass
    return None


def writable_folder(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return writable(folder)


def keep_optimised(saved: Path, final: Path) -> None:
    """Rename ONNX Runtime's saved optimised graph into place (atomic: concurrent runs each rename a
    whole file) and remove the versions of the same graph it supersedes."""
    if not saved.is_file():
        return
    try:
        os.replace(saved, final)
        for old in final.parent.glob(f"{final.name.split('-')[0]}-*.onnx"):
            if old != final:
                old.unlink(missing_ok=True)
    except OSError:  # a cache is an optimisation: never an error
        saved.unlink(missing_ok=True)


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


# ------------------------------------------------------------------------- the exported graph, kept


def exported_graph(checkpoint: Path, note: Callable[[str], None] = stderr_note) -> Path:
    """The checkpoint's ONNX graph: one already exported from this very checkpoint, else a new export.

    Beside the checkpoint (``.NAME.onnx``) unless that folder cannot be written, then in the user's
    cache folder under the checkpoint's SHA-256. The write is atomic (a temporary name, then a rename),
    so predicts running at once each find a whole graph, whichever export landed last.
    """
    beside = checkpoint.with_name(f".{checkpoint.name}.onnx")
    source: dict[str, Any] | None = None
    if beside.is_file():
        recorded = recorded_source(beside)
        if recorded and recorded.get("stat") == file_stat(checkpoint.stat()):
            return beside  # untouched since it was exported: no need to hash it
        source = checkpoint_source(checkpoint)
        if recorded and recorded.get("sha256") == source["sha256"]:
            return beside  # a copy of the same checkpoint
    source = source or checkpoint_source(checkpoint)
    cached = cache_folder() / f"{source['sha256']}.onnx"
    if cached.is_file() and (recorded_source(cached) or {}).get("sha256") == source["sha256"]:
        return cached
    missing = export.onnx_export_missing()
    if missing:
        raise ExportUnavailable(f"exporting the model for ONNX Runtime needs torch, onnx and onnxscript "
                                f"({missing}); pip install 'uiaa[onnx]', or use --engine torch")

    target = beside if writable(beside.parent) else cached  # a read-only run folder: the user's cache
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UiaaError(f"cannot make the folder for the exported model ({e.strerror or e})",
                        where=at(str(target.parent))) from None
    export.export_model(checkpoint, target, "onnx",  # atomic: a temporary name, renamed when whole
                        loaded=lambda: note(f"exporting {checkpoint} for ONNX Runtime (once; kept as {target})"))
    return target


def writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried, not guessed: root ignores permission bits
    but not a read-only mount)."""
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".uiaa-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def recorded_source(graph: Path) -> dict[str, Any] | None:
    """The checkpoint hash recorded in an exported graph (read without loading its weights)."""
    try:
        text = onnx_metadata(graph).get(SOURCE_KEY)
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uiaa" / "onnx"


def onnx_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props``, read by walking the protobuf's top-level fields and seeking
    past the rest (the graph and its weights), so checking a 100 MB graph reads a few bytes of it."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while f.tell() < size:
            key = read_varint(f)
            field, wire = key >> 3, key & 7
            if wire == 0:
                read_varint(f)
            elif wire == 1:
                f.seek(8, os.SEEK_CUR)
            elif wire == 5:
                f.seek(4, os.SEEK_CUR)
            elif wire == 2:
                length = read_varint(f)
                if field == 14:  # ModelProto.metadata_props: StringStringEntryProto {1: key, 2: value}
                    entry = parse_fields(f.read(length))
                    out[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
                else:
                    f.seek(length, os.SEEK_CUR)
            else:
                raise ValueError(f"not an ONNX file (protobuf wire type {wire})")
    return out


def read_varint(f: Any) -> int:
    shift = result = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise ValueError("not an ONNX file (truncated)")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("not an ONNX file (bad varint)")


def parse_fields(data: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a small protobuf message."""
    import io

    f, out = io.BytesIO(data), {}
    while f.tell() < len(data):
        key = read_varint(f)
        if key & 7 != 2:
            raise ValueError("not an ONNX metadata entry")
        out[key >> 3] = f.read(read_varint(f))
    return out


# ------------------------------------------------------------------------------------------- torch


class TorchEngine:
    """The checkpoint in torch eager: bf16 autocast and channels_last on CUDA, float32 on CPU and MPS."""

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
        self.autocast = dev.type == "cuda"
        self.bins = np.asarray(self.config["bins"], dtype=np.float64)
        self.outputs = len(self.config["targets"])

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if not len(pixels):
            return np.zeros(0), np.zeros((0, self.outputs))
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.torch_device)
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=self.layout)  # NHWC is channels_last already
        with torch.inference_mode():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                out = self.scorer.model(self.scorer.normalise(x))
            probs = self.scorer.activate(out.float())  # outside autocast: the softmax in float32
        probs = probs.cpu().numpy().astype(np.float64)
        return predicted_score(probs, self.bins)[0], probs
