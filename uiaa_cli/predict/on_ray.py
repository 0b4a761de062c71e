"""Scoring on Ray Data: the recipe of docs/python.md ("On a cluster") as one function.

``score_dataset(source, model)`` builds the lazy pipeline Ray's batch-inference guide describes:

1. **read**: WebDataset shards (``read_webdataset``, undecoded: the members' bytes), a Parquet or CSV
   table of paths (``read_parquet`` / ``read_csv``), a folder of images (``read_binary_files``), or
   a ``ray.data.Dataset`` you made, whose ``image`` column holds bytes, decoded arrays or paths;
2. **decode** on CPU tasks (``map_batches(decode_batch)``): each image to the model's size exactly
   as ``uiaa predict`` decodes a file (:func:`uiaa_cli.predict.scorer.image_pixels`), a failing one
   to a row with its reason in ``error``;
3. **score** in a pool of actors, one model each (``map_batches(Scorer, compute=ActorPoolStrategy(...),
   num_gpus=...)``; Ray restarts a lost actor and retries its batches);

(Ray runs the decoding inside the actors' processes when both stages ask for the same resources,
as on a CPU-only cluster with ``decode_cpus == cpus_per_actor``: one copy of the pixels fewer; with
GPUs, or other numbers, decoding runs on CPU tasks of its own) and returns the Dataset, one row per
input: ``image`` (a shard sample's ``__key__``, else the path),
``shard`` for shards, ``score``, ``std``, ``p_*``, ``kind``, ``activation`` and ``error``: the columns
of ``uiaa predict -o``, plus ``error``. Write it with ``.write_parquet(folder)``; rows come in no
particular order (``DataContext.get_current().execution_options.preserve_order = True`` keeps the
input's). Ray is imported only when the function runs (the ``ray`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from uiaa_cli.errors import UiaaError, at
from uiaa_cli.predict.inputs import PATH_COLUMNS, is_labels_table
from uiaa_cli.predict.scorer import Scorer, image_pixels

# Member extensions tried for a shard sample's image, in this order (the common ones of img2dataset).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")


def score_dataset(source: Any, model: str | os.PathLike, *, actors: int | tuple[int, int] = 2,
                  num_gpus: float = 0, cpus_per_actor: float = 1, decode_cpus: float = 1,
                  batch_size: int = 32, images: str | os.PathLike | None = None, engine: str = "auto",
                  device: str = "auto", scorer: type[Scorer] = Scorer) -> Any:
    """The scores of ``source`` as a lazy ``ray.data.Dataset`` (see the module doc).

    ``source``: a ``.tar`` shard or a list of them (also ``s3://...`` and other pyarrow file
    systems), a ``.parquet``/``.csv`` table of paths (its ``path``, ``image``, ``file``, ``filepath``
    or ``filename`` column; relative paths under ``images``, default the table's folder, as predict), a folder of
    images, or a Dataset with an ``image`` column. ``model``: a checkpoint or ``.onnx`` every node
    can read (a shared file system). ``actors``: the pool's size, or ``(min, max)`` to autoscale;
    ``num_gpus``/``cpus_per_actor``: what each actor holds (``num_gpus=1``: one GPU each, the torch
    engine); ``decode_cpus``: what each decoding task holds. On a CPU-only cluster the checkpoint is
    exported for ONNX Runtime once, here, before the actors start. ``scorer``: the class the actors
    run (a subclass of :class:`Scorer` that adds columns, say).

    >>> import ray
    >>> from uiaa_cli import score_dataset
    >>> ray.init(num_cpus=2)  # doctest: +SKIP
    >>> score_dataset("shards/", "model.pt", cpus_per_actor=0.5).write_parquet("scores/")  # doctest: +SKIP
    """
    import ray

    path, config = model_config(model, exporting=num_gpus == 0 and engine != "torch")
    size = int(config["size"])
    ds, kind, root = read_source(ray, source, images)
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": size, "kind": kind, "root": root},
                        batch_size=batch_size, num_cpus=decode_cpus)
    pool = ray.data.ActorPoolStrategy(size=actors) if isinstance(actors, int) else \
        ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
    return ds.map_batches(scorer, fn_constructor_kwargs={"model": path, "column": "pixels",
                                                         "engine": engine, "device": device,
                                                         "batch_size": batch_size},
                          batch_size=batch_size, compute=pool, num_gpus=num_gpus, num_cpus=cpus_per_actor)


def model_config(model: str | os.PathLike, *, exporting: bool) -> tuple[str, dict[str, Any]]:
    """The model's absolute path (Ray's workers do not run in this working folder) and its config, read
    here on the driver (the decoders need its size); ``exporting``: export a checkpoint's ONNX graph
    now, once, rather than in every actor at once."""
    import json

    from uiaa_cli.models.export import CONFIG_KEY
    from uiaa_cli.models.graphs import exported_graph, onnx_metadata
    from uiaa_cli.models.model_files import find_model, is_onnx

    path = find_model(os.fspath(model)).resolve()
    if is_onnx(path) or exporting:
        graph = path if is_onnx(path) else exported_graph(path)
        text = onnx_metadata(graph).get(CONFIG_KEY)
        if not text:
            raise UiaaError("an ONNX model without uiaa's config", where=at(str(graph)))
        return str(path), json.loads(text)
    from uiaa_cli.models.networks import load_scorer  # a GPU cluster: the driver may be the only place with torch

    return str(path), load_scorer(path)[1]


OUTPUT_COLUMNS = ("image", "shard", "score", "std", "kind", "activation", "error")


def passed_through(batch: dict[str, Any], source: str) -> dict[str, Any]:
    """The input's other columns, carried into the output, but never one the output's own columns
    would be confused with (a labels table's p_* are votes, not predictions)."""
    return {k: v for k, v in batch.items()
            if k != source and k not in OUTPUT_COLUMNS and not k.startswith("p_")}


def read_source(ray: Any, source: Any, images: str | os.PathLike | None) -> tuple[Any, str, str | None]:
    """``(dataset, kind, root)`` of ``source``: kind ``webdataset``, ``paths`` (a table's column),
    ``files`` (a folder's bytes) or ``dataset`` (given); ``root``: the folder relative paths of a
    table are under (``images``, else the table's folder), absolute, as Ray's workers do not run in
    this process's working folder."""
    root = None if images is None else os.path.abspath(images)
    if isinstance(source, ray.data.Dataset):
        return source, "dataset", root
    sources = [os.fspath(s) for s in source] if isinstance(source, (list, tuple)) else [os.fspath(source)]
    sources = [s if "://" in s else os.path.abspath(s) for s in sources]
    first = sources[0].rstrip("/")
    if first.endswith(".tar") or (os.path.isdir(first) and all_tars(first)):
        return ray.data.read_webdataset(sources, decoder=None, file_extensions=["tar"]), "webdataset", root
    if root is None and "://" not in first:
        root = os.path.dirname(first)  # predict's default for a table of paths: the table's folder
    if first.endswith((".parquet", ".pq")):
        return ray.data.read_parquet(sources), "paths", root
    if first.endswith((".csv", ".tsv")):
        import pyarrow.csv as pacsv

        options = pacsv.ParseOptions(delimiter="\t") if first.endswith(".tsv") else None
        return ray.data.read_csv(sources, parse_options=options), "paths", root
    if os.path.isdir(first) or "://" in first:
        from uiaa_cli.pixels.images import readable_extensions

        extensions = sorted(e.lstrip(".") for e in readable_extensions())
        return ray.data.read_binary_files(sources, include_paths=True, file_extensions=extensions), "files", None
    raise UiaaError("give WebDataset .tar shards, a .parquet/.csv table of paths, a folder of images or a "
                    "ray.data.Dataset", where=at(first))


def all_tars(folder: str) -> bool:
    names = [n for n in os.listdir(folder) if not n.startswith(".")]
    return bool(names) and all(n.endswith(".tar") for n in names)


def decode_batch(batch: dict[str, np.ndarray], size: int, kind: str, root: str | None = None) -> dict[str, np.ndarray]:
    """One batch decoded (a CPU task): ``pixels`` ``(B, size, size, 3)`` uint8 (zeros where decoding
    failed), ``error`` (the reason, or empty), ``image`` (the name predict gives) and, for shards,
    ``shard``; the source's other small columns pass through."""
    n = len(next(iter(batch.values())))
    out: dict[str, np.ndarray] = {}
    if kind == "webdataset":
        cells = shard_images(batch, n)
        out["image"] = np.asarray(batch["__key__"], dtype=object)
        out["shard"] = np.asarray(batch["__url__"], dtype=object)
    elif kind == "files":
        cells, out["image"] = list(batch["bytes"]), np.asarray(batch["path"], dtype=object)
    elif kind == "paths":
        column = next((c for c in PATH_COLUMNS if c in batch), None)
        if column is None:
            raise UiaaError(f"the table has no column of paths ({', '.join(PATH_COLUMNS)}); it has {', '.join(batch)}")
        names = [str(p) for p in batch[column]]
        if root is not None and is_labels_table(list(batch)):  # as predict reads one: AVA's bare ids, no escape
            cells = [resolved(root, name) for name in names]
        else:
            cells = [p if root is None or os.path.isabs(p) else os.path.join(root, p) for p in names]
        out["image"] = np.asarray(names, dtype=object)
        out.update(passed_through(batch, column))
    else:
        cells = list(batch["image"])
        out.update(passed_through(batch, "image"))
    pixels = np.zeros((n, size, size, 3), dtype=np.uint8)
    errors = [""] * n
    for i, cell in enumerate(cells):
        if isinstance(cell, UiaaError):
            errors[i] = cell.message
            continue
        try:
            pixels[i] = image_pixels(cell, size)
        except UiaaError as e:
            errors[i] = e.message
        except (OSError, ValueError) as e:  # one bad image is one row, never a failed task
            errors[i] = str(e) or type(e).__name__
    out["pixels"], out["error"] = pixels, np.array(errors, dtype=object)
    return out


def resolved(root: str, name: str) -> Any:
    """The file a labels table's ``name`` names under ``root`` (pixels/images.resolve_image's rules),
    or the reason it names none (that row's error)."""
    from uiaa_cli.pixels.images import resolve_image

    try:
        return str(resolve_image(root, name))
    except UiaaError as e:
        return e


def shard_images(batch: dict[str, np.ndarray], n: int) -> list[Any]:
    """Each shard sample's image bytes: its first member with an image extension, else an error."""
    columns = [c for c in IMAGE_EXTENSIONS if c in batch]
    cells: list[Any] = []
    for i in range(n):
        found = next((batch[c][i] for c in columns if batch[c][i] is not None), None)
        cells.append(found if found is not None else UiaaError("no image member in this sample"))
    return cells


def predict_on_ray(arguments: list[str], *, model: str | None, output: str | None, fmt: str | None, address: str,
                   images: str | None = None, batch_size: int = 32, engine: str = "auto", device: str = "auto") -> Any:
    """``uiaa predict INPUTS --ray ADDRESS``: :func:`score_dataset` on the cluster at ``address``
    (``local``: one started here for this run; ``auto``: the cluster of this node), its rows
    streamed back into predict's own outputs (``path<TAB>score`` lines, or the table of ``-o``). A
    failing image is predict's line on stderr. The inputs are one kind of source (shards, a table
    of paths or a folder), as :func:`score_dataset` takes. Returns predict's ``PredictResult``."""
    import time

    from uiaa_cli.models.model_files import find_model
    from uiaa_cli.predict.pipeline import PredictResult

    try:
        import ray
    except ImportError:
        raise UiaaError("--ray needs Ray: pip install 'uiaa[ray]'") from None
    path = find_model(model)  # before a cluster starts: no model is the usual first error
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except Exception as e:  # noqa: BLE001 - ConnectionError, ValueError, Ray's own: one line
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UiaaError(f"--ray {address}: cannot start or reach the Ray cluster ({reason})") from None
        ray.data.DataContext.get_current().enable_progress_bars = False
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    # Every stage must find a CPU free: an actor holding the only one would starve the reads and hang.
    if gpus and device != "cpu":  # one actor per GPU, as many as leave a CPU to the reads
        options: dict[str, Any] = {"actors": (1, max(1, min(gpus, cpus - 1))), "num_gpus": 1,
                                   **({} if cpus > 1 else {"cpus_per_actor": 0.5, "decode_cpus": 0.5})}
    elif cpus > 1:  # half the CPUs score (one thread each), the rest read and decode
        options = {"actors": cpus // 2, "cpus_per_actor": 1, "decode_cpus": 1}
    else:  # one CPU: half of it each (Ray then fuses the two stages)
        options = {"actors": 1, "cpus_per_actor": 0.5, "decode_cpus": 0.5}
    source = arguments if len(arguments) > 1 else arguments[0]
    start = time.perf_counter()
    ds = score_dataset(source, path, images=images, batch_size=batch_size, engine=engine, device=device, **options)
    scored, failed = write_scores(ds, str(path), output, fmt, address)
    if not (scored or failed):
        raise UiaaError("no inputs: nothing to score")
    return PredictResult(scored, failed, time.perf_counter() - start)


def write_scores(ds: Any, path: str, output: str | None, fmt: str | None, address: str) -> tuple[int, int]:
    """The scored dataset's rows as predict writes them (lines, or the table -o), failures reported:
    (scored, failed). An error or Ctrl-C mid-stream leaves no half-written -o behind."""
    sinks: list[Any] = []
    try:
        return _write_scores(ds, path, output, fmt, address, sinks.append)
    except BaseException:
        for sink in sinks:
            sink.interrupted()
        raise


def _write_scores(ds: Any, path: str, output: str | None, fmt: str | None, address: str,
                  opened: Callable[[Any], None]) -> tuple[int, int]:
    from uiaa_cli.predict.inputs import Input
    from uiaa_cli.predict.pipeline import LinesSink, TableSink, empty_rows, json_safe, report_failure
    from uiaa_cli.tables.table import Table

    sink = None
    scored = failed = 0
    columns: list[str] = []
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        errors = np.asarray(batch["error"]).astype(str)
        for i in np.flatnonzero(errors != ""):
            shard = str(batch["shard"][i]) if "shard" in batch else ""
            report_failure(Input(0, str(batch["image"][i]), shard, ()), errors[i])
        good = errors == ""
        columns = ["image", *(["shard"] if "shard" in batch else []), "score", "std",
                   *[c for c in batch if c.startswith("p_")], "kind", "activation"]  # predict's, in its order
        if sink is None:
            head = {key: str(batch[key][0]) for key in ("kind", "activation") if len(batch[key])}
            attrs = {"uiaa": "predict", "model": str(path), **head, "config": json_safe({"ray": address})}
            sink = LinesSink() if output is None else TableSink(output, fmt, attrs)
            opened(sink)
        if good.any():
            values = {c: np.asarray(batch[c])[good] for c in columns}
            for c in ("image", "shard", "kind", "activation"):
                if c in values:
                    values[c] = values[c].astype(str)
            sink.write(Table({"_index": np.zeros(int(good.sum()), dtype=np.int64), **values}))
        scored += int(good.sum())
        failed += int((~good).sum())
    if isinstance(sink, TableSink) and not sink.started:  # every image failed: a valid table of no rows
        sink.write(empty_rows(columns))
    if sink is not None:
        sink.close(0, "", failed)
    return scored, failed
