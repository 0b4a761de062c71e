"""``uiaa train``: fine-tune a backbone on a labels table or a cache."""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from uiaa_cli.cli.handling import handled, say
from uiaa_cli.cli.options import (
    AT_LEAST_0,
    AT_LEAST_1,
    AT_LEAST_2,
    FINITE,
    NON_NEGATIVE,
    PIXELS,
    POSITIVE,
    SHARE,
    UNIT,
    Debug,
    Device,
    Divisor,
    Kind,
    Loss,
    Progress,
    Quiet,
    Select,
    learning_rates,
)
from uiaa_cli.errors import ExitStatus


class Compile(str, Enum):  # training.settings.COMPILE_CHOICES
    auto = "auto"
    on = "on"
    off = "off"


class Decode(str, Enum):  # training.settings.DECODE_CHOICES
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


EPILOG = """Examples:

  uiaa train ava.h5 --device cuda:0            # from a cache (fast)

  uiaa train labels.csv --images photos/       # decoding on the fly

  uiaa train train.h5 --val test.h5 --lr 1e-3,1e-4 --out runs/mine

  uiaa train small.csv --arch resnet18 --weights none --size 64 --device cpu

  uiaa train ava.h5 --kind rsd                 # one cache, any kind: targets from its votes

  uiaa train --resume runs/mine                # after Ctrl-C

  torchrun --nproc_per_node=4 -m uiaa_cli train ava.h5    # DDP, 4 GPUs

Writes metrics.csv, last.pt (resumable) and best.pt (the epoch --select picks, among those whose
validation is finite) in --out, and points 'latest' beside it (runs/latest by default) at the newest
run; 'uiaa predict' finds runs/latest. The summary shows both checkpoints. One run at a time writes a
folder: a second run on the same --out stops with an error.

Exit status: 0 done; 1 training failed (more than --max-missing of the images missing, or no epoch with
a finite validation: no best.pt, last.pt kept); 2 usage or input error; 130 interrupted.
"""
def train(
    data: Annotated[Optional[str], typer.Argument(help="A labels table (images decoded on the fly from "
                                                       "--images) or a cache made by 'uiaa cache'. Optional "
                                                       "with --resume.")] = None,
    images: Annotated[Optional[str], typer.Option(help="Folder of the images named in a labels table (default: "
                                                       "the table's folder).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="resnet18/34/50/101/152, vgg16, vgg16_bn, efficientnet_b0, "
                                                     "convnext_tiny, mobilenet_v3_large (default: a --weights "
                                                     "checkpoint's, else resnet50).")] = None,
    loss: Annotated[Loss, typer.Option(help="ce and emd train a softmax head, mse and huber a linear "
                                            "one.")] = Loss.ce,
    epochs: Annotated[int, typer.Option(help="Passes over the training images.", callback=AT_LEAST_1)] = 10,
    lr: Annotated[Optional[str], typer.Option(help="START,END: per-epoch exponential decay (one value: "
                                                   "constant). Default, END = START/10, from pretrained "
                                                   "weights (the paper's): ce/emd 1e-3 for distributions, "
                                                   "1e-2 for binary/soft; mse "
                                                   "10^-2.5; huber 10^-1.5. From scratch (--weights none, "
                                                   "measured on the example data): ce/emd 1e-2; mse, huber "
                                                   "1e-3. VGG 10x lower.", callback=learning_rates)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step (per process under torchrun).",
                                            callback=AT_LEAST_2)] = 32,
    momentum: Annotated[float, typer.Option(help="SGD momentum.", callback=NON_NEGATIVE)] = 0.9,
    weight_decay: Annotated[Optional[float], typer.Option(help="Default 1e-4 (ResNet), 5e-4 (VGG).",
                                                          callback=NON_NEGATIVE)] = None,
    size: Annotated[Optional[int], typer.Option(help="Image side in pixels, warp-resized (default: the cache's, "
                                                     "else 384).", callback=PIXELS)] = None,
    weights: Annotated[str, typer.Option(help="imagenet (torchvision's; downloaded once), none (from "
                                              "scratch), or a weights/checkpoint file.")] = "imagenet",
    val: Annotated[Optional[str], typer.Option(help="Validation labels table or cache (default: hold out "
                                                    "--val-frac of DATA).")] = None,
    val_frac: Annotated[float, typer.Option(help="Share of DATA held out for validation when no --val "
                                                 "(0: none).", callback=SHARE)] = 0.1,
    device: Device = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Processes decoding images of a labels table (default: "
                                                        "cores, at most 32).", callback=AT_LEAST_0)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initial head, batches and flips.",
                                      callback=AT_LEAST_0)] = 0,
    out: Annotated[Optional[str], typer.Option(help="Run folder (default runs/<arch>-<kind>-<loss>-<time>).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue the run in this folder with its own settings "
                                                       "(only data paths, --device, --workers, --compile, --decode "
                                                       "apply).")] = None,
    kind: Annotated[Optional[Kind], typer.Option(help="Derive the targets from DATA's vote columns, as 'uiaa "
                                                      "labels --kind' would (default: DATA's own targets). "
                                                      "Images binary --delta leaves out do not train; "
                                                      "validation still scores them.")] = None,
    lam: Annotated[float, typer.Option(help="With --kind gauss-mv: var_z = min((1 - lam) var, cap).",
                                       callback=UNIT)] = 0.5,
    cap: Annotated[float, typer.Option(help="With --kind gauss-mv: the largest variance allowed.",
                                       callback=POSITIVE)] = 1.5,
    divisor: Annotated[Divisor, typer.Option(help="With a Gaussian --kind: 2var or var (the authors' "
                                                  "code).")] = Divisor.two_var,
    threshold: Annotated[Optional[float], typer.Option(help="With --kind binary: the threshold (default "
                                                             "b_ceil(M/2)); also accuracy's.", callback=FINITE)] = None,
    delta: Annotated[float, typer.Option(help="With --kind binary: leave out images with |mean - threshold| "
                                              "< delta from training.", callback=NON_NEGATIVE)] = 0.0,
    max_missing: Annotated[float, typer.Option(help="The largest share of the images named in DATA (or --val) "
                                                    "that may be missing (a cache: that its build could not "
                                                    "decode); more, and train stops before the first step "
                                                    "(exit 1).", callback=UNIT)] = 0.05,
    compile_: Annotated[Compile, typer.Option("--compile", help="torch.compile the network for the training "
                                                                "steps: auto (on CUDA only), on, off. Applies "
                                                                "with --resume too.")] = Compile.auto,
    decode: Annotated[Decode, typer.Option(help="Where a jpeg cache's images are decoded: cpu (the loader's "
                                                "processes, Pillow), gpu (torchvision's decode_jpeg on the CUDA "
                                                "device, a batch per call), auto (cpu until measured faster on "
                                                "a GPU). Applies with --resume too.")] = Decode.auto,
    select: Annotated[Select, typer.Option(help="Which epoch best.pt holds: last (default: measured best on "
                                                "held-out data, see docs/commands/train.md), loss (lowest validation "
                                                "loss), srcc (highest validation SRCC) or smooth (SRCC averaged over 3 "
                                                "epochs).")] = Select.last,
    progress: Progress = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Fine-tune a ResNet/VGG on a labels table or a cache, with one loss for every kind of target."""
    with handled("train", quiet, debug):
        from uiaa_cli.tables.formats import require_inputs

        require_inputs(data, val, resume, None if weights in ("imagenet", "none") else weights)
        if out and not resume:  # a run that cannot be saved is refused before its data is read
            from uiaa_cli.tables.outputs import check_output_folder

            check_output_folder(out, what="run folder", create=False)
        # The data, its images and the share missing, before torch loads (seconds): a typo is one
        # line at once. A resumed run's data paths come from its last.pt, checked once it is read.
        from uiaa_cli.training.inputs import check_inputs

        inputs = check_inputs(data, images, val, max_missing) if data and not resume else None
        from uiaa_cli.training.runtime import Interrupted
        from uiaa_cli.training.settings import TrainSettings, parse_lr
        from uiaa_cli.training.trainer import train as run_training

        if arch is None:  # fine-tuning a uiaa model (on any scale: it gets a new head) keeps its backbone
            from uiaa_cli.models.networks import checkpoint_arch

            arch = (checkpoint_arch(weights) if weights not in ("imagenet", "none") else None) or "resnet50"
        settings = TrainSettings(
            data=data, images=images, arch=arch, loss=loss.value, epochs=epochs, lr=parse_lr(lr) if lr else None,
            batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, size=size, weights=weights,
            val=val, val_frac=val_frac, device=device, workers=workers, seed=seed, out=out, resume=resume,
            progress=progress, quiet=quiet, select=select.value, kind=kind.value if kind else None, lam=lam,
            cap=cap, divisor=divisor.value, threshold=threshold, delta=delta, max_missing=max_missing,
            compile=compile_.value, decode=decode.value)
        try:
            folder = run_training(settings, inputs)
        except Interrupted as e:
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
                print(f"uiaa train: {e}", file=sys.stderr, flush=True)
            raise typer.Exit(ExitStatus.INTERRUPTED) from None
        if os.environ.get("RANK", "0") == "0":
            say(f"uiaa train: done; best model {folder / 'best.pt'}")
