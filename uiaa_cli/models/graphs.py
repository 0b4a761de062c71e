"""Kept graphs: the ONNX graphs made from a checkpoint once and reused, and what they record.

- Where a graph made from a checkpoint is kept (``kept_graph``), one policy for the fp32 export
  (``exported_graph``) and the int8 one (``quantized_graph``): beside the checkpoint as
  ``.NAME.onnx`` / ``.NAME.int8.onnx`` (``best.pt``: ``.best.pt.onnx``), or, when that folder is
  read-only, in the user's cache folder (``$XDG_CACHE_HOME/uiaa/onnx`` or ``~/.cache/uiaa/onnx``)
  as ``<sha256>.onnx`` / ``<sha256>.int8.onnx``, named by the checkpoint's SHA-256. A graph records
  the checkpoint's hash (metadata ``uiaa_source``) and is reused only while it matches, so a retrained
  ``best.pt`` is exported again and a copied run folder is not. Writes are atomic (a temporary name,
  then a rename), so predicts running at once each find a whole graph.
- ONNX Runtime's fully optimised form of a graph, which depends on the CPU, kept in the user cache
  (``.../uiaa/optimised``, ``optimised_graph``) and loaded from then on (docs/engines.md, "Speed and
  start-up"; the figures are in benchmarks/README.md).
- A graph's metadata (``onnx_metadata``: ``uiaa_config``, ``uiaa_source``), read by walking the
  protobuf's top-level fields, so checking a 100 MB graph reads a few bytes of it and needs neither
  onnx nor onnxruntime.

Importing this module imports neither torch nor onnxruntime: the ONNX engine reuses an exported
graph without torch.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.models import export
from uiaa_cli.models.export import CONFIG_KEY, SOURCE_KEY, ExportUnavailable, checkpoint_source, file_stat

if TYPE_CHECKING:
    from uiaa_cli.models.calibration import Calibration


def stderr_note(message: str) -> None:
    print(f"uiaa predict: {message}", file=sys.stderr, flush=True)


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uiaa" / "onnx"


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


def writable_folder(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return writable(folder)


# ------------------------------------------------------------------- graphs made from a checkpoint


@dataclass(frozen=True)
class Kept:
    """A checkpoint's graph of one kind: ``found``, one made from this very checkpoint (None: make
    it), and the two places it may be kept."""

    found: Path | None
    beside: Path
    cached: Path

    def place(self, what: str) -> Path:
        """Where to keep a new graph: beside the checkpoint unless that folder cannot be written,
        then the user's cache (its folder made)."""
        target = self.beside if writable(self.beside.parent) else self.cached
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UiaaError(f"cannot make the folder for {what} ({e.strerror or e})",
                            where=at(str(target.parent))) from None
        return target


def kept_graph(checkpoint: Path, suffix: str, *, fresh: bool = False) -> Kept:
    """The graph ``.NAME{suffix}`` beside ``checkpoint``, else ``<sha256>{suffix}`` in the user cache,
    found while its recorded ``uiaa_source`` matches the checkpoint; ``fresh``: none is found."""
    beside = checkpoint.with_name(f".{checkpoint.name}{suffix}")
    source: dict[str, Any] | None = None
    found = None
    if beside.is_file():
        recorded = recorded_source(beside) or {}
        untouched = recorded.get("sha256") and recorded.get("stat") == file_stat(checkpoint.stat())
        source = recorded if untouched else checkpoint_source(checkpoint)  # untouched: no need to hash it
        if recorded.get("sha256") == source["sha256"]:  # or a copy of the same checkpoint
            found = beside
    source = source or checkpoint_source(checkpoint)
    cached = cache_folder() / f"{source['sha256']}{suffix}"
    if found is None and cached.is_file() and (recorded_source(cached) or {}).get("sha256") == source["sha256"]:
        found = cached
    return Kept(None if fresh else found, beside, cached)


def exported_graph(checkpoint: Path, note: Callable[[str], None] = stderr_note) -> Path:
    """The checkpoint's fp32 ONNX graph: one already exported from this very checkpoint, else a new
    export (which needs torch, onnx and onnxscript), kept as ``kept_graph`` says."""
    kept = kept_graph(checkpoint, ".onnx")
    if kept.found is not None:
        return kept.found
    missing = export.onnx_export_missing()
    if missing:
        raise ExportUnavailable(f"exporting the model for ONNX Runtime needs torch, onnx and onnxscript "
                                f"({missing}); pip install 'uiaa[onnx]', or use --engine torch")
    target = kept.place("the exported model")
    export.export_model(checkpoint, target, "onnx",  # atomic: a temporary name, renamed when whole
                        loaded=lambda: note(f"exporting {checkpoint} for ONNX Runtime (once; kept as {target})"))
    return target


def quantized_graph(checkpoint: Path, calibration: Calibration | None, note: Callable[[str], None]) -> Path:
    """The checkpoint's int8 graph, quantized once from its fp32 graph and kept as ``kept_graph``
    says (the int8 graph carries the fp32 graph's ``uiaa_source``); ``calibration.fresh``
    quantizes anew."""
    from uiaa_cli.models.quantize import quantize

    kept = kept_graph(checkpoint, ".int8.onnx", fresh=bool(calibration and calibration.fresh))
    if kept.found is not None:
        return kept.found
    if calibration is None:
        raise UiaaError("no int8 model of this checkpoint yet: give images to calibrate it on",
                        where=at(str(checkpoint)))
    fp32 = exported_graph(checkpoint, note)
    target = kept.place("the int8 model")
    pixels = calibration.pixels(int(model_config(fp32)["size"]))
    note(f"quantizing {checkpoint} to int8 (once; kept as {target}), calibrating on {calibration.source}")
    try:
        agreement = quantize(fp32, target, pixels, source=calibration.source)
    except OSError as e:
        raise UiaaError(f"cannot write the int8 model ({e.strerror or e})", where=at(str(target))) from None
    note(str(agreement))
    return target


# ------------------------------------------------------------- ONNX Runtime's optimised copies


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


# --------------------------------------------------------------------------------- metadata


def recorded_source(graph: Path) -> dict[str, Any] | None:
    """The checkpoint hash recorded in an exported graph (read without loading its weights)."""
    try:
        text = onnx_metadata(graph).get(SOURCE_KEY)
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def model_precision(path: Path) -> str:
    """``fp32`` or ``int8``, as recorded in an ONNX model's ``uiaa_config`` (read from its metadata only)."""
    try:
        return str(json.loads(onnx_metadata(path).get(CONFIG_KEY) or "{}").get("precision", "fp32"))
    except (OSError, ValueError, AttributeError):
        return "fp32"  # not readable here: ONNX Runtime says what is wrong with it


def model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``uiaa_config`` metadata of an exported model (its size, bins, targets, precision...)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise UiaaError(f"not a readable ONNX model ({type(e).__name__})", where=at(str(path))) from None
    meta = {p.key: p.value for p in model.metadata_props}
    if CONFIG_KEY not in meta:
        raise UiaaError("an ONNX model without uiaa's config: export it with 'uiaa convert CHECKPOINT.pt "
                        "OUT.onnx'", where=at(str(path)))
    return json.loads(meta[CONFIG_KEY])


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
