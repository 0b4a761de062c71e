"""int8 models for CPUs: static quantization of an exported uiaa ONNX model, and int8 support.

``uiaa convert model.pt model.onnx --int8 --calibrate DATA`` (``convert_int8``) and ``uiaa predict
--precision int8`` (``engines.open_engine``, which keeps the result with ``graphs.quantized_graph``)
come here; this module also says whether this CPU runs int8 fast (``int8_support``) and refuses int8
where it would be wrong or slow (``check_int8_device``). ONNX Runtime's static quantizer
(``onnxruntime.quantization.quantize_static``) rewrites the fp32 graph in the QDQ format; ONNX
Runtime then fuses each ``DequantizeLinear -> Conv -> QuantizeLinear`` into an int8 kernel on CPU.
The ranges of the activations come from calibration images (``calibration``), made exactly as
predict makes its pixels, so the int8 model sees what it will score.

What stays float, and why:

- the head ``pixels (uint8) -> Cast -> Mul -> Add``: the normalisation of training (the ImageNet
  mean and std, docs/engines.md "Model export"). The quantizer would otherwise put a QuantizeLinear
  on the uint8 input and quantize Mul and Add, so two different photos could reach the network as
  the same tensor; the network's first Conv quantizes the exact normalised pixels instead.
- the last layer (the one that makes the logits) and everything after it (softmax or sigmoid, the
  score ``probs @ bins``): 256 levels of logits would move every score by up to a few hundredths,
  and this part costs nothing next to the backbone.

Choices, by measurement (``benchmarks/bench_int8.py``; the figures are in benchmarks/README.md, the
user's view in docs/engines.md):

- QDQ, uint8 activations and int8 weights (U8S8): S8S8 ran slower than fp32, as ONNX Runtime's fast
  x86 kernels are U8S8.
- per-channel weights: the same speed as per-tensor, and closer to fp32.
- 7-bit weights (``reduce_range``): ``u8 x s8`` pair sums then fit int16, which is what AVX2 CPUs
  without VNNI compute (``vpmaddubsw`` saturates otherwise); so one int8 file is right on every x86
  CPU, at no measurable cost.
- MinMax calibration on 128 images: Entropy and Percentile gave no closer scores for twice the
  time; fewer or more images agreed as well, and the time grows with the count.
- keeping the head and the logits layer float (above): closer scores, the largest difference
  smaller.

Importing this module never imports torch or onnxruntime.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.models.calibration import CALIBRATION_IMAGES, HELD_BACK_IMAGES, calibration_pixels
from uiaa_cli.models.graphs import model_config

MIN_CALIBRATION_IMAGES = 16
CALIBRATION_BATCH = 16


# ----------------------------------------------------------------------------------- the CPU


@dataclass(frozen=True)
class Int8Support:
    """What this CPU offers int8 models: ``fast`` (int8 dot products in hardware), ``what`` in words."""

    fast: bool | None  # None: unknown (no /proc/cpuinfo)
    what: str


def int8_support(cpuinfo: str | None = None) -> Int8Support:
    """Whether this CPU has the instructions that make int8 faster than fp32 in ONNX Runtime.

    x86: AVX2 at least (``vpmaddubsw``), best with VNNI (``avx512_vnni``, ``avx_vnni``) or AMX;
    ARM: the dot-product extension (``asimddp``). Without them ONNX Runtime's int8 kernels fall back
    to code slower than its fp32 ones.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if not flags:
        machine = platform.machine().lower()
        if platform.system() == "Darwin" and machine == "arm64":
            return Int8Support(True, "Apple silicon (dot product instructions)")
        return Int8Support(None, f"unknown {machine or 'CPU'}")
    for flag, name in (("amx_int8", "AMX and VNNI"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI")):
        if flag in flags:
            return Int8Support(True, name)
    if "avx2" in flags:
        return Int8Support(True, "AVX2 without VNNI")
    if "asimddp" in flags:
        return Int8Support(True, "ARM dot product instructions")
    if "asimd" in flags:
        return Int8Support(False, "ARM without the dot product instructions (asimddp)")
    return Int8Support(False, "x86 without AVX2")


def slow_int8_reason() -> str | None:
    """Why int8 would be slower than fp32 on this CPU, or None when it is fast (or unknown)."""
    support = int8_support()
    if support.fast is False:
        return (f"this CPU ({support.what}) lacks the int8 instructions that make int8 models fast "
                "(AVX2/VNNI on x86, dot product on ARM): the int8 model would run slower than fp32")
    return None


def check_int8_device(device: str, engine: str = "auto", *, requested: bool = True,
                      note: Callable[[str], None] | None = None) -> None:
    """Refuse int8 where it would be wrong (a GPU, torch) and, when it was asked for, where it would
    be slow (a CPU without int8 instructions); an int8 model given as it is only gets a warning there."""
    if engine == "torch":
        raise UiaaError("int8 models run in ONNX Runtime on the CPU: use --engine onnx (or auto)")
    if device not in ("auto", "cpu"):
        instead = ("drop --precision int8 (a GPU runs the checkpoint in bf16)" if requested else
                   "give the checkpoint (a GPU runs it in bf16)")
        raise UiaaError(f"int8 models are for CPUs (ONNX Runtime's int8 kernels); on --device {device} they would "
                        f"run slower than fp32 or not at all: {instead}, or use --device cpu")
    reason = slow_int8_reason()
    if reason and requested:
        raise UiaaError(f"--precision int8: {reason}; drop --precision int8")
    if reason and note:
        note(f"warning: {reason}")


# ------------------------------------------------------------------------------ the graph


def float_nodes(model: Any) -> list[str]:
    """Names of the nodes that stay float: the preprocessing before the first Conv, and the layer
    that makes the logits with everything after it (see the module's docstring)."""
    nodes = list(model.graph.node)
    names = [n.name for n in nodes]
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    first_conv = next((i for i, n in enumerate(nodes) if n.op_type == "Conv"), None)
    keep: set[int] = set()
    if first_conv is not None:  # every ancestor of the first Conv's data input
        todo = [producer[nodes[first_conv].input[0]]] if nodes[first_conv].input[0] in producer else []
        while todo:
            i = todo.pop()
            if i not in keep:
                keep.add(i)
                todo += [producer[x] for x in nodes[i].input if x in producer]
    initializers = {t.name for t in model.graph.initializer}
    layers = [i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul") and len(n.input) > 1
              and n.input[1] in initializers and i not in keep]
    # The score is probs @ bins (a MatMul with a constant too): the logits layer is the last one
    # whose output does not come from a softmax/sigmoid.
    head = [i for i in layers if not _after_activation(nodes, producer, i)]
    if head:
        keep.update(range(head[-1], len(nodes)))  # nodes are in topological order
    return [names[i] for i in sorted(keep)]


def _after_activation(nodes: list[Any], producer: dict[str, int], i: int) -> bool:
    seen, todo = set(), [i]
    while todo:
        j = todo.pop()
        if j in seen:
            continue
        seen.add(j)
        if j != i and nodes[j].op_type in ("Softmax", "Sigmoid"):
            return True
        todo += [producer[x] for x in nodes[j].input if x in producer]
    return False


# ------------------------------------------------------------------------------ quantizing


@dataclass
class Agreement:
    """How closely the int8 model follows the fp32 one on held-back images."""

    images: int
    max_abs: float  # largest |score difference| on the 1..10 (or 1..5) scale
    srcc: float  # Spearman correlation of the two models' scores
    calibration_images: int
    seconds: float

    def __str__(self) -> str:
        return (f"int8 vs fp32 on {self.images} held-back images: max |score difference| {self.max_abs:.4f}, "
                f"SRCC {self.srcc:.4f} (calibrated on {self.calibration_images} images in {self.seconds:.1f} s)")


def quantize(fp32: str | os.PathLike, target: str | os.PathLike, pixels: np.ndarray, *,
             calibration: int = CALIBRATION_IMAGES, held_back: int = HELD_BACK_IMAGES,
             source: str = "", **options: Any) -> Agreement:
    """Quantize the fp32 model at ``fp32`` into ``target`` (atomically), calibrating on ``pixels``.

    ``pixels`` is uint8 ``(N, S, S, 3)``, as predict makes them; up to ``calibration`` of them set
    the ranges and up to ``held_back`` others measure the agreement (a quarter of them are held back
    when there are fewer than both). ``options`` override the quantizer's settings (for the
    benchmarks).
    """
    from uiaa_cli.tables.writers import atomic_path

    calibrate, check = split_calibration(len(pixels), calibration, held_back)
    config = model_config(fp32)
    if config.get("precision", "fp32") != "fp32":
        raise UiaaError(f"already a {config['precision']} model: quantize the fp32 export", where=at(str(fp32)))
    start = time.perf_counter()
    with atomic_path(target) as tmp:
        quantize_file(fp32, tmp, pixels[calibrate], {**config, "precision": "int8",
                                                    "calibration": {"images": len(calibrate), "source": source}},
                      **options)
        seconds = time.perf_counter() - start
        agreement = compare(fp32, tmp, pixels[check])
    return Agreement(len(check), agreement[0], agreement[1], len(calibrate), seconds)


def split_calibration(n: int, calibration: int, held_back: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the calibration and held-back images among ``n``, spread evenly over them."""
    if n < MIN_CALIBRATION_IMAGES:
        raise UiaaError(f"{n} image{'s' if n != 1 else ''} to calibrate the int8 model on; it needs at least "
                        f"{MIN_CALIBRATION_IMAGES} (give more with --calibrate DATA)")
    if n >= calibration + held_back:
        take = np.linspace(0, n - 1, calibration + held_back).round().astype(np.int64)
        check = take[::max(1, (calibration + held_back) // held_back)][:held_back]
    else:
        take = np.arange(n)
        check = take[::4]
    return np.setdiff1d(take, check), check


def quantize_file(fp32: str | os.PathLike, target: str | os.PathLike, pixels: np.ndarray, config: dict[str, Any], *,
                  per_channel: bool = True, reduce_range: bool = True, activation: str = "uint8",
                  op_types: list[str] | None = None, method: str = "minmax", keep_float: bool = True) -> None:
    """``quantize_static`` in QDQ with the settings of the module's docstring, and ``config`` as
    the model's ``uiaa_config``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = constant_identities_folded(onnx.load(str(fp32)))
    exclude = float_nodes(model) if keep_float else []
    with quiet_root_logger():  # "Please consider pre-processing": the graph is exported already optimised
        quantize_static(
            model, str(target), PixelReader(pixels), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            reduce_range=reduce_range, activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, op_types_to_quantize=op_types, nodes_to_exclude=exclude,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
        )
    quantized = onnx.load(str(target))
    del quantized.metadata_props[:]
    for key, value in {**{p.key: p.value for p in model.metadata_props},
                       "uiaa_config": json.dumps(config)}.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(quantized, str(target))


def constant_identities_folded(model: Any) -> Any:
    """``model`` with every ``Identity`` of a weight replaced by a copy of that weight.

    torch's exporter shares equal weights through Identity nodes (every Conv bias of a network whose
    BatchNorms still have their initial statistics is zero, and one zero bias then serves them all).
    The quantizer cannot turn a bias behind an Identity into int32, so ONNX Runtime cannot fuse that
    Conv into its int8 kernel and runs it in float between a DequantizeLinear and a QuantizeLinear:
    ResNet-50 ran slower than fp32 instead of faster (benchmarks/README.md).
    """
    from onnx import numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    folded = [n for n in model.graph.node if n.op_type == "Identity" and n.input[0] in weights]
    for node in folded:
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(weights[node.input[0]]),
                                                               node.output[0]))
        model.graph.node.remove(node)
    return model


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer advises its developers through the root logger: not for our users."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class PixelReader:
    """The calibration images as the model's input: batches of uint8 ``(B, 3, S, S)``."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.batches: Iterator[dict[str, np.ndarray]] = (
            {"pixels": np.ascontiguousarray(pixels[i:i + CALIBRATION_BATCH].transpose(0, 3, 1, 2))}
            for i in range(0, len(pixels), CALIBRATION_BATCH))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def session(path: str | os.PathLike, threads: int | None = None) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def scores(path: str | os.PathLike, pixels: np.ndarray) -> np.ndarray:
    """The model's scores of uint8 ``(N, S, S, 3)`` pixels."""
    model = session(path)
    out = [model.run(["score"], {"pixels": np.ascontiguousarray(pixels[i:i + CALIBRATION_BATCH]
                                                                .transpose(0, 3, 1, 2))})[0]
           for i in range(0, len(pixels), CALIBRATION_BATCH)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def compare(fp32: str | os.PathLike, int8: str | os.PathLike, pixels: np.ndarray) -> tuple[float, float]:
    """max |score difference| and SRCC between the two models' scores of ``pixels``."""
    from uiaa_cli.metrics import spearman

    a, b = scores(fp32, pixels).astype(np.float64), scores(int8, pixels).astype(np.float64)
    srcc = spearman(a, b) if len(a) > 2 and np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")
    return float(np.abs(a - b).max()), float(srcc)


# ----------------------------------------------------------------------------- uiaa convert


def convert_int8(source: str, target: str, calibrate: str, images: str | None = None) -> tuple[dict, Agreement]:
    """``uiaa convert SOURCE TARGET --int8 --calibrate DATA``: SOURCE is a checkpoint (exported to
    fp32 ONNX first, in a temporary file) or an fp32 ONNX export. Returns the int8 model's config
    and the agreement measured on held-back calibration images."""
    import tempfile

    if Path(target).suffix.lower() != ".onnx":
        raise UiaaError("an int8 model is an ONNX file: give OUT.onnx", where=at(target))
    with tempfile.TemporaryDirectory(prefix="uiaa-int8-") as tmp:
        if Path(source).suffix.lower() == ".onnx":
            fp32 = Path(source)
        else:
            from uiaa_cli.models.export import export_model  # imports torch: only for checkpoints

            fp32 = Path(tmp) / "fp32.onnx"
            export_model(source, str(fp32))
        config = model_config(fp32)
        pixels = calibration_pixels(calibrate, int(config["size"]), images)
        agreement = quantize(fp32, target, pixels, source=str(calibrate))
    return model_config(target), agreement
