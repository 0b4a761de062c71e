"""``uiaa train``: ``trainer`` (the run and its epoch loop) with ``settings``, ``run_data`` (sources, targets,
split) over ``data`` (the batch sources), ``validation``, ``checkpoints`` (save and resume), ``run_folder``
(name, lock, ``latest``), ``runtime`` (device, ranks, stopping) and ``report`` (stderr, ``metrics.csv``)."""
