"""int8 models for CPU scoring: static quantization of an exported uiaa ONNX model.

``uiaa convert model.pt model.onnx --int8 --calibrate DATA`` and ``uiaa predict --precision int8``
come here. ONNX Runtime's static quantizer (``onnxruntime.quantization.quantize_static``) rewrites
the fp32 graph in the QDQ format; ONNX Runtime then fuses each ``DequantizeLinear -> Conv ->
QuantizeLinear`` into an int8 kernel on CPU. The ranges of the activations come from calibration
images, made exactly as predict makes its pixels (``images.decode_image``, a cache's stored
pixels), so the int8 model sees what it will score.

What stays float, and why:

- the head ``pixels (uint8) -> Cast -> Mul -> Add``: the normalisation of training (SPEC's mean and
  std). The quantizer would otherwise put a QuantizeLinear on the uint8 input and quantize Mul and
  Add, so two different photos could reach the network as the same tensor; the network's first
  Conv quantizes the exact normalised pixels instead.
- the last layer (the one that makes the logits) and everything after it (softmax or sigmoid, the
  score ``probs @ bins``): 256 levels of logits would move every score by up to a few hundredths,
  and this part costs nothing next to the backbone.

Choices, by measurement on this project's machine (a 2-core Xeon VM with AVX-512 VNNI and AMX; the
demo's model on the example data's 150 held-out images, ResNet-50 at 224 px for speed; see
``benchmarks/bench_int8.py`` and the README):

- QDQ, uint8 activations and int8 weights (U8S8). S8S8 ran at 0.7x fp32: ONNX Runtime's fast x86
  kernels are U8S8.
- per-channel weights: the same speed as per-tensor (2.39x fp32 both), and closer to fp32 (SRCC
  between the scores 0.998 against 0.995, mean |difference| 0.020 against 0.030).
- 7-bit weights (``reduce_range``): ``u8 x s8`` pair sums then fit int16, which is what AVX2 CPUs
  without VNNI compute (``vpmaddubsw`` saturates otherwise); so one int8 file is right on every x86
  CPU. It cost nothing measurable here (2.39x against 2.24x without; agreement 0.998 both).
- MinMax calibration on 128 images: Entropy and Percentile gave no closer scores (0.995) for 2x the
  time; 32, 64, 128 and 400 images all agreed to 0.995-0.998, and the time grows with the count.
- keeping the head and the logits layer float (above): 0.995 against 0.993, max |difference| 0.10
  against 0.17.

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

CALIBRATION_IMAGES = 128  # images the ranges come from (see the README for the measurement)
HELD_BACK_IMAGES = 64  # images scored by both models to report their agreement
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


# ------------------------------------------------------------------------------ the graph


def model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``uiaa_config`` metadata of an exported model (its size, bins, targets, precision...)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise UiaaError(f"not a readable ONNX model ({type(e).__name__})", where=at(str(path))) from None
    meta = {p.key: p.value for p in model.metadata_props}
    if "uiaa_config" not in meta:
        raise UiaaError("an ONNX model without uiaa's config: export it with 'uiaa convert CHECKPOINT.pt "
                        "OUT.onnx'", where=at(str(path)))
    return json.loads(meta["uiaa_config"])


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
    from uiaa_cli.tables.table import atomic_path

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
    ResNet-50 ran at 0.6x fp32 instead of 2-3x.
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


# ------------------------------------------------------------------------ calibration images


def calibration_pixels(data: str, size: int, images: str | None = None,
                       count: int = CALIBRATION_IMAGES + HELD_BACK_IMAGES) -> np.ndarray:
    """Up to ``count`` images of ``data`` (a folder, a cache, or a labels table whose images are
    under ``images``), spread evenly over it, as uint8 ``(N, size, size, 3)`` made as predict makes
    them. Images that cannot be read are left out."""
    from uiaa_cli.pixels.cache import is_cache
    from uiaa_cli.pixels.images import decode_image, image_table, list_images, resolve_image

    path = Path(data)
    if path.is_dir():
        files = list_images(path)
        return decode_some([str(f) for f in spread(files, count)], lambda f: decode_image(f, size), size)
    if not path.is_file():
        raise UiaaError("no such file or folder of calibration images", where=at(data))
    if is_cache(path):
        from uiaa_cli.pixels.cache import CacheReader

        with CacheReader(path) as reader:
            if reader.size != size:
                raise UiaaError(f"the cache holds {reader.size} px images and the model takes {size} px: "
                                "calibrate on its labels table with --images instead", where=at(data))
            return reader.read(spread(np.arange(len(reader)), count))
    table, root = image_table(data, images)  # a labels table; anything else is a one-line error
    names = [str(n) for n in spread(table["image"].astype(str).tolist(), count)]
    return decode_some(names, lambda n: decode_image(resolve_image(root, n), size), size)


def spread(items: Any, count: int) -> list:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(np.int64)]


def decode_some(names: list[str], decode: Any, size: int) -> np.ndarray:
    """The images that decode (the others are left out: calibration needs many, not all)."""
    from uiaa_cli.pixels.images import ImageError

    out = []
    for name in names:
        try:
            out.append(decode(name))
        except (ImageError, OSError):
            continue
    return np.stack(out) if out else np.zeros((0, size, size, 3), dtype=np.uint8)


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



# ----------------------------------------------------------------------------- uiaa predict


PRECISIONS = ("fp32", "int8")


def open_engine(model: str | None, engine: str = "auto", device: str = "auto", *, precision: str | None = None,
                calibration: Calibration | None = None, threads: int | None = None,
                note: Callable[[str], None] | None = None) -> Any:
    """``engines.open_engine`` with a precision: an int8 ONNX model (``-m model-int8.onnx``) or a
    checkpoint quantized once (``--precision int8``) runs on the CPU in ONNX Runtime; everything else
    goes to ``engines.open_engine`` unchanged.

    ``calibration`` gives the images a checkpoint is calibrated on when it has no int8 graph yet.
    """
    from uiaa_cli.models import engines

    note = note or engines.stderr_note
    if precision not in (None, *PRECISIONS):
        raise UiaaError(f"unknown precision {precision!r}; use fp32 or int8")
    path = engines.find_model(model)
    stored = model_precision(path) if engines.is_onnx(path) else "fp32"
    if precision is not None and engines.is_onnx(path) and precision != stored:
        raise UiaaError(f"--precision {precision}: this is an {stored} ONNX model; "
                        + ("give its checkpoint, or quantize it with 'uiaa convert MODEL.onnx OUT.onnx --int8 "
                           "--calibrate DATA'" if precision == "int8" else "give the fp32 model or its checkpoint"),
                        where=at(str(path)))
    if (precision or stored) != "int8":
        return engines.open_engine(model, engine, device, threads=threads, note=note)
    check_int8_device(device, engine, requested=precision == "int8", note=note)
    if not engines.is_onnx(path):
        path = quantized_graph(path, calibration, note)
    return engines.OnnxEngine(path, "cpu", threads)


def model_precision(path: Path) -> str:
    """``fp32`` or ``int8``, as recorded in an ONNX model's ``uiaa_config`` (read from its metadata only)."""
    from uiaa_cli.models.engines import onnx_metadata

    try:
        return str(json.loads(onnx_metadata(path).get("uiaa_config") or "{}").get("precision", "fp32"))
    except (OSError, ValueError, AttributeError):
        return "fp32"  # not readable here: ONNX Runtime says what is wrong with it


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


@dataclass
class Calibration:
    """Where a checkpoint's int8 graph gets its calibration images: ``pixels(size)`` gives them as
    uint8 ``(N, size, size, 3)``; ``fresh``: quantize anew even when an int8 graph is kept (the user
    gave --calibrate)."""

    pixels: Callable[[int], np.ndarray]
    source: str
    fresh: bool = False


def calibration_for(arguments: list[str], images: str | None, calibrate: str | None,
                    precision: str | None) -> Calibration:
    """predict's calibration images: ``--calibrate DATA`` (quantize anew), else the inputs' first
    images, decoded as they are for scoring."""
    if calibrate is not None and precision != "int8":
        raise UiaaError("--calibrate goes with --precision int8")
    if calibrate is not None:
        return Calibration(lambda size: calibration_pixels(calibrate, size, images), calibrate, fresh=True)
    if "-" in arguments:  # stdin can be read only once, and it is for scoring
        def refuse(size: int) -> np.ndarray:
            raise UiaaError("--precision int8 with paths on stdin: give images to calibrate on with --calibrate "
                            "DATA (once; the int8 model is kept)")
        return Calibration(refuse, "")
    return Calibration(lambda size: input_pixels(arguments, size, images),
                       f"the inputs' first images (up to {CALIBRATION_IMAGES + HELD_BACK_IMAGES})")


def input_pixels(arguments: list[str], size: int, images: str | None) -> np.ndarray:
    """The first inputs' pixels, decoded as predict decodes them (those that fail are left out)."""
    import itertools

    from uiaa_cli.pixels.decoding import load
    from uiaa_cli.predict.inputs import open_inputs

    pixels = []
    for item in itertools.islice(open_inputs(arguments, size, images), CALIBRATION_IMAGES + HELD_BACK_IMAGES):
        try:
            pixels.append(load(item.source, size))
        except (UiaaError, OSError, ValueError):
            continue
    return np.stack(pixels) if pixels else np.zeros((0, size, size, 3), dtype=np.uint8)


def quantized_graph(checkpoint: Path, calibration: Calibration | None, note: Callable[[str], None]) -> Path:
    """The checkpoint's int8 graph, quantized once and kept as its fp32 graph is kept
    (``engines.exported_graph``): ``.NAME.int8.onnx`` beside it, else ``<sha256>.int8.onnx`` in the
    user's cache folder; reused while the checkpoint's hash matches (the int8 graph carries the fp32
    graph's ``uiaa_source``)."""
    from uiaa_cli.models import engines
    from uiaa_cli.models.export import checkpoint_source, file_stat

    beside = checkpoint.with_name(f".{checkpoint.name}.int8.onnx")
    source: dict[str, Any] | None = None
    if beside.is_file():
        recorded = engines.recorded_source(beside) or {}
        if recorded.get("stat") == file_stat(checkpoint.stat()):
            source = recorded  # untouched since: no need to hash it
        else:
            source = checkpoint_source(checkpoint)
        if recorded.get("sha256") == source["sha256"] and not (calibration and calibration.fresh):
            return beside
    source = source or checkpoint_source(checkpoint)
    cached = engines.cache_folder() / f"{source['sha256']}.int8.onnx"
    if (cached.is_file() and (engines.recorded_source(cached) or {}).get("sha256") == source["sha256"]
            and not (calibration and calibration.fresh)):
        return cached
    if calibration is None:
        raise UiaaError("no int8 model of this checkpoint yet: give images to calibrate it on",
                        where=at(str(checkpoint)))
    fp32 = engines.exported_graph(checkpoint, note)
    target = beside if engines.writable(beside.parent) else cached  # a read-only run folder: the user's cache
    pixels = calibration.pixels(int(model_config(fp32)["size"]))
    note(f"quantizing {checkpoint} to int8 (once; kept as {target}), calibrating on {calibration.source}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        agreement = quantize(fp32, target, pixels, source=calibration.source)
    except OSError as e:
        raise UiaaError(f"cannot write the int8 model ({e.strerror or e})", where=at(str(target))) from None
    note(str(agreement))
    return target
