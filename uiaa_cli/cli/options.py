"""Option values shared by the commands, checked as the command line is parsed, before any work."""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, Optional

import typer

# ----------------------------------------------------------------------------- option values
# Every numeric option is checked here, as the command line is parsed, before any work: a bad
# value is one line ``uiaa CMD: error: invalid value for '--opt': ...`` and exit status 2.


def checked(test: Callable[[Any], bool], what: str) -> Callable[[Any], Any]:
    """A typer callback refusing values (other than an absent default) for which ``test`` is false."""
    def check(value: Any) -> Any:
        if value is not None and not test(value):
            raise typer.BadParameter(f"{what}, got {value!r}")
        return value

    return check


def _finite(x: float) -> bool:
    return math.isfinite(x)


FINITE = checked(_finite, "must be a finite number")
POSITIVE = checked(lambda x: _finite(x) and x > 0, "must be a positive finite number")
NON_NEGATIVE = checked(lambda x: _finite(x) and x >= 0, "must be a finite number >= 0")
UNIT = checked(lambda x: _finite(x) and 0 <= x <= 1, "must lie in [0, 1]")
SHARE = checked(lambda x: _finite(x) and 0 <= x < 1, "must lie in [0, 1)")
AT_LEAST_0 = checked(lambda n: n >= 0, "must be 0 or more")
AT_LEAST_1 = checked(lambda n: n >= 1, "must be 1 or more")
AT_LEAST_2 = checked(lambda n: n >= 2, "must be 2 or more (batch normalisation needs two images)")
PIXELS = checked(lambda n: 8 <= n <= 4096, "must lie in 8..4096 pixels")


def learning_rates(text: Optional[str]) -> Optional[str]:
    """``--lr START,END``: two positive finite numbers (or one, for a constant rate)."""
    if text is not None:
        parts = text.split(",")
        try:
            ok = len(parts) in (1, 2) and all(math.isfinite(float(p)) and float(p) > 0 for p in parts)
        except ValueError:
            ok = False
        if not ok:
            raise typer.BadParameter(f"expected START,END, two positive numbers (e.g. 1e-3,1e-4), got {text!r}")
    return text


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No messages on stderr, only errors.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors.")]
Progress = Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr "
                                                  "(default: when stderr is a terminal).")]


class Kind(str, Enum):
    binary = "binary"
    soft = "soft"
    rsd = "rsd"
    gauss_nv = "gauss-nv"
    gauss_mv = "gauss-mv"


class SourceFormat(str, Enum):
    ava = "ava"
    counts = "counts"
    koniq = "koniq"
    long = "long"
    xmp = "xmp"  # a folder of photos or sidecars: their XMP star ratings


class TableFormat(str, Enum):
    csv = "csv"
    tsv = "tsv"
    parquet = "parquet"
    h5 = "h5"


TableOutput = Annotated[str, typer.Option("--output", "-o", help="Output file (.csv, .tsv, .parquet, .h5); - for "
                                                              "stdout.")]
TableTo = Annotated[Optional[TableFormat], typer.Option(help="Output format (default: by extension; csv on "
                                                             "stdout).")]


class EngineName(str, Enum):
    auto = "auto"
    onnx = "onnx"
    torch = "torch"


class Precision(str, Enum):
    fp32 = "fp32"
    int8 = "int8"


# The scoring options of predict and rate (and train's --device): one declaration, one help text.
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
Engine = Annotated[EngineName, typer.Option(help="auto: ONNX Runtime on CPU (the checkpoint exported once, kept "
                                                 "beside it), torch on CUDA/MPS.")]
BatchSize = Annotated[int, typer.Option(help="Images per batch.", callback=AT_LEAST_1)]
DecodeWorkers = Annotated[Optional[int], typer.Option("--workers", help="Decoding processes (default: min(4, "
                                                      "cores); 0 decodes in the main process).",
                                                      callback=AT_LEAST_0)]
OutputFormat = Annotated[Optional[TableFormat], typer.Option("--to", help="Format of -o (default: by extension).")]


class Divisor(str, Enum):
    two_var = "2var"
    var = "var"


class Loss(str, Enum):
    ce = "ce"
    mse = "mse"
    huber = "huber"
    emd = "emd"


class Select(str, Enum):  # training.SELECT_RULES
    srcc = "srcc"
    smooth = "smooth"
    loss = "loss"
    last = "last"
