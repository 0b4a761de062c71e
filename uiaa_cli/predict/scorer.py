"""The scoring library: a model opened once, images in, the table ``uiaa predict -o`` writes out.

:class:`Scorer` is what notebooks, pipelines and Ray Data use, and ``uiaa predict`` runs the same
code: the pixels come from the same decoder (:func:`uiaa_cli.pixels.images.decode_image`, Pillow's
resize whatever the engine), the model from the same ``engines.open_engine``, and the numbers from
:func:`score_pixels`, which the command's pipeline calls too. So ``Scorer.score(paths)`` equals
``uiaa predict PATHS -o TABLE`` on the same files, to float precision.

Importing this module imports neither torch nor pandas (pandas only for ``Scorer.score``'s table).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.evaluation import head_record

if TYPE_CHECKING:
    import pandas as pd

    from uiaa_cli.models.engines import Engine

# A batch cell, for the Ray form: what ``read_images`` (uint8 arrays), ``read_webdataset`` or a
# Parquet of bytes (encoded bytes), and a table of paths (path strings) give.
ENCODED = (bytes, bytearray, memoryview)


def score_pixels(engine: Engine, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(score, std, probs)`` of a batch of uint8 ``(B, S, S, 3)`` pixels, float64 each; ``std`` is NaN
    for 2-set models. The one place the numbers are made, for ``uiaa predict`` and :class:`Scorer`.

    Outputs that are not finite (a model whose training diverged) are one error, never a NaN score.
    """
    from uiaa_cli.metrics import predicted_score

    _, probs = engine(pixels)
    probs = np.asarray(probs, dtype=np.float64)
    if not np.isfinite(probs).all():
        raise UiaaError("the model gives NaN or infinite outputs: its weights have blown up (training diverged?); "
                        "use an earlier checkpoint, or train again with a lower --lr",
                        where=at(str(getattr(engine, "checkpoint", None) or engine.model)))
    score, std = predicted_score(probs, np.asarray(engine.config["bins"], dtype=np.float64))
    return score, np.full(len(score), np.nan) if std is None else std, probs


def image_pixels(image: Any, size: int) -> np.ndarray:
    """One image as the ``(size, size, 3)`` uint8 pixels the model takes, decoded and resized as
    ``uiaa predict`` does: a path or encoded bytes through ``decode_image`` itself; a PIL image
    (EXIF orientation applied) or a uint8 array ``(H, W, 3)``, ``(H, W)`` or ``(H, W, 4)`` resized
    with the same filter. Raises ``UiaaError`` (``ImageError``) with a one-line reason."""
    from uiaa_cli.pixels import images

    if isinstance(image, (str, os.PathLike)) or isinstance(image, ENCODED):
        return images.decode_image(bytes(image) if isinstance(image, memoryview) else image, size)
    if isinstance(image, np.ndarray):
        return array_pixels(image, size)
    from PIL import Image

    if isinstance(image, Image.Image):
        return picture_pixels(image, size)
    raise UiaaError(f"cannot score a {type(image).__name__}: give a path, encoded bytes, a PIL image or a uint8 "
                    "array (H, W, 3)")


def array_pixels(array: np.ndarray, size: int) -> np.ndarray:
    """A decoded picture (``ray.data.read_images`` gives the full picture) resized as predict resizes a
    file: the whole picture warped to ``size`` x ``size``, antialiased bilinear (no crop)."""
    from PIL import Image

    from uiaa_cli.pixels import images

    if array.dtype != np.uint8:
        raise images.ImageError(f"pixels must be uint8 (0..255), not {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape:
        raise images.ImageError(f"pixels must be (H, W, 3), (H, W) or (H, W, 4), not {array.shape}")
    if array.shape[:2] == (size, size) and array.ndim == 3 and array.shape[2] == 3:
        return np.array(array)  # already the model's size (a decoding stage did it): nothing to resize
    return images._resize(images._to_rgb(Image.fromarray(np.ascontiguousarray(array))), size)


def picture_pixels(picture: Any, size: int) -> np.ndarray:
    """A PIL image as predict would have decoded its file: any mode to RGB (transparency on white),
    warped to ``size``, then turned as its EXIF orientation says (a picture already turned with
    ``ImageOps.exif_transpose`` has no orientation left)."""
    from uiaa_cli.pixels import images

    picture.load()
    pixels = images._resize(images._to_rgb(picture), size)
    orientation = images._orientation(picture)
    return images._ORIENT[orientation](pixels) if orientation in images._ORIENT else pixels


def image_name(image: Any, position: int) -> str:
    """What the output calls an image: its path as given, a PIL image's file name, else its position."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    filename = getattr(image, "filename", None)
    return str(filename) if filename else str(position)


def as_list(images: Any) -> list[Any]:
    """One image or many as a list: a path, bytes, a PIL image or one (H, W[, C]) array is one image."""
    if isinstance(images, (str, os.PathLike, *ENCODED)):
        return [images]
    if isinstance(images, np.ndarray):
        return [images] if images.ndim in (2, 3) and images.dtype != object else list(images)
    if hasattr(images, "getpixel"):  # a PIL image (without importing Pillow to ask)
        return [images]
    if hasattr(images, "columns"):  # iterating a DataFrame gives its column names, not its images
        raise UiaaError("give the column that holds the images (df['path']), not the whole DataFrame")
    if isinstance(images, Iterable):
        return list(images)
    return [images]


class Scorer:
    """A trained model, opened once, that scores images.

    ``model``: a checkpoint, a run folder or an exported ``.onnx`` (default: what ``uiaa predict``
    finds: ``$UIAA_MODEL``, else the newest run under ``./runs``). ``device`` and ``engine`` are
    predict's ``--device`` and ``--engine`` (``auto``: ONNX Runtime on a CPU, torch on CUDA/MPS);
    ``batch_size`` images go through the model at a time. ``column`` is the batch column that holds
    the images in the Ray form (:meth:`__call__`); ``threads`` the model's CPU threads (default: the
    CPUs Ray gave this actor, else every core this process may use).

    Two ways to call it:

    - :meth:`score` (notebooks, scripts): paths, PIL images, uint8 arrays or encoded bytes, one or
      many, to a DataFrame ``image, score, std, p_*, kind, activation``, the table ``uiaa predict -o``
      writes for the same files.
    - ``scorer(batch)`` (:meth:`__call__`), the form of ``ray.data.Dataset.map_batches``: a dict of
      columns in, the same dict out with ``score``, ``std``, ``p_*``, ``kind``, ``activation`` and
      ``error`` added and the image column dropped, so the class itself is what ``map_batches`` takes
      (docs/python.md, "On a cluster").

    Example (``model.pt`` and ``photos/`` as in docs/python.md)::

        >>> from uiaa_cli import Scorer
        >>> scorer = Scorer("model.pt", device="cpu")
        >>> table = scorer.score(["photos/100001.jpg", "photos/100002.jpg"])
        >>> list(table.columns[:3]), len(table)
        (['image', 'score', 'std'], 2)
        >>> bool(table["score"].between(1, 10).all())
        True
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto", engine: str = "auto",
                 batch_size: int = 32, *, precision: str | None = None, column: str = "image",
                 threads: int | None = None) -> None:
        from uiaa_cli.models.engines import open_engine
        from uiaa_cli.pixels import images

        if batch_size < 1:
            raise UiaaError("batch_size must be at least 1")
        images.resize_without_torch()  # predict's pixels whichever engine runs (pixels/decoding.py)
        self.engine = open_engine(None if model is None else os.fspath(model), engine, device,
                                  precision=precision, threads=threads or ray_cpus())
        self.config = self.engine.config
        self.size = int(self.config["size"])
        self.batch_size = batch_size
        self.column = column
        self.targets = [str(t) for t in self.config["targets"]]
        self.head = head_record(self.config)

    def __repr__(self) -> str:
        return f"Scorer({self.engine.model!r}, engine={self.engine.name!r}, device={self.engine.device!r})"

    # ------------------------------------------------------------------ notebooks and scripts

    def score(self, images: Any, *, names: Iterable[str] | None = None, errors: str = "row") -> pd.DataFrame:
        """Score ``images`` (one, or an iterable of them: paths, PIL images, uint8 arrays, encoded bytes).

        Returns a DataFrame with one row per image, in order: ``image`` (the path as given, a PIL
        image's file name, else the position; ``names`` overrides), ``score``, ``std`` (NaN for 2-set
        models), the memberships ``p_*``, and the head's ``kind`` and ``activation``, as ``uiaa predict
        -o`` writes them (so :func:`uiaa_cli.evaluate` reads it). A pandas Series of paths keeps its
        index, so ``df.join(scorer.score(df["path"]))`` lines up.

        An image that cannot be read is a row with NaN scores and its reason in an ``error`` column
        (present only when some image failed); ``errors="raise"`` raises the first failure instead.

        >>> import numpy as np
        >>> from uiaa_cli import Scorer
        >>> scorer = Scorer("model.pt", device="cpu")
        >>> grey = np.full((40, 60, 3), 128, dtype=np.uint8)
        >>> table = scorer.score([grey, b"not an image"])
        >>> table["error"].tolist()[1]
        'not an image (or a format Pillow cannot read)'
        >>> bool(np.isnan(table["score"].iloc[1]))
        True
        """
        import pandas as pd

        if errors not in ("row", "raise"):
            raise UiaaError(f"errors must be 'row' or 'raise', not {errors!r}")
        items = as_list(images)
        labels = [str(n) for n in names] if names is not None else [image_name(x, i) for i, x in enumerate(items)]
        if len(labels) != len(items):
            raise UiaaError(f"{len(labels)} names for {len(items)} images")
        columns = self._score_cells(items, raise_errors=errors == "raise")
        index = images.index if isinstance(images, pd.Series) else None
        frame = pd.DataFrame({"image": labels, **columns}, index=index)
        if not frame["error"].astype(bool).any():
            frame = frame.drop(columns="error")
        frame.attrs.update(uiaa="predict", model=str(getattr(self.engine, "checkpoint", None) or self.engine.model),
                           bins=list(self.config["bins"]), **self.head)
        return frame

    # -------------------------------------------------------------------------------- Ray Data

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The Ray Data form: ``ds.map_batches(Scorer, fn_constructor_kwargs={"model": path}, ...)``.

        ``batch[column]`` (``image`` unless ``column`` says otherwise) holds decoded uint8 arrays (as
        ``ray.data.read_images`` gives: the full picture, resized here as predict resizes a file),
        encoded bytes (``read_webdataset``, ``read_binary_files``, a Parquet of bytes) or paths. Every
        other column passes through; ``score``, ``std``, ``p_*``, ``kind``, ``activation`` and
        ``error`` (empty when the image scored) are added, and the image column is dropped. An
        ``error`` already set (by a decoding stage) is kept and that row is not scored.

        >>> import numpy as np
        >>> from uiaa_cli import Scorer
        >>> scorer = Scorer("model.pt", device="cpu")
        >>> batch = {"image": np.zeros((2, 50, 70, 3), dtype=np.uint8), "path": np.array(["a.png", "b.png"])}
        >>> out = scorer(batch)
        >>> sorted(out)[:4], out["path"].tolist()
        (['activation', 'error', 'kind', 'p_1'], ['a.png', 'b.png'])
        """
        if self.column not in batch:
            raise UiaaError(f"the batch has no {self.column!r} column (has: {', '.join(batch)}); give the images' "
                            f"column with Scorer(..., column=NAME)")
        cells = batch[self.column]
        known = batch.get("error")
        out = {k: v for k, v in batch.items() if k not in (self.column, "error")}
        out.update(self._score_cells(list(cells), known=None if known is None else list(known)))
        return out

    # ----------------------------------------------------------------------------- the work

    def _score_cells(self, items: list[Any], *, known: list[Any] | None = None,
                     raise_errors: bool = False) -> dict[str, np.ndarray]:
        """Columns ``score, std, p_*, kind, activation, error`` for ``items``, batch by batch."""
        n = len(items)
        score, std = np.full(n, np.nan), np.full(n, np.nan)
        probs = np.full((n, len(self.targets)), np.nan)
        # Only a non-empty text is an error: a missing cell (None, or NaN from a pandas batch) is none.
        failures = [e if isinstance(e, str) else "" for e in known] if known is not None else [""] * n
        for start in range(0, n, self.batch_size):
            good, pixels = [], []
            for i in range(start, min(start + self.batch_size, n)):
                if failures[i]:
                    continue
                try:
                    pixels.append(image_pixels(items[i], self.size))
                    good.append(i)
                except UiaaError as e:
                    if raise_errors:
                        raise
                    failures[i] = e.message
                except (OSError, ValueError) as e:  # one bad image never stops the others
                    if raise_errors:
                        raise
                    failures[i] = str(e) or type(e).__name__
            if good:
                score[good], std[good], probs[good] = score_pixels(self.engine, np.stack(pixels))
        columns: dict[str, np.ndarray] = {"score": score, "std": std}
        columns.update({name: probs[:, j] for j, name in enumerate(self.targets)})
        columns.update({key: np.full(n, value, dtype=object) for key, value in self.head.items()})
        columns["error"] = np.array(failures, dtype=object)
        return columns


def ray_cpus() -> int | None:
    """The CPUs Ray gave this worker (an actor's ``num_cpus``), so two actors on a node do not each
    run a thread per core; None outside Ray (and for a fraction of a CPU: the default applies)."""
    import sys

    if "ray" not in sys.modules:
        return None
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - a driver, an old Ray: the default threads
        return None
    return max(1, int(cpus)) if cpus else None
