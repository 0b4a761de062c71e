"""Shared fixtures: the real ``uiaa`` command in a subprocess, and excerpts of real rating files."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path

import pytest
from forkserver import Server

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (make test: one worker per core) a worker, and every command it starts, gets its
# share of the cores for torch's threads, so workers do not fight over them (set before torch loads).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
TEST_DATA = REPO / "tests" / "data"  # real-data excerpts shipped with the tests (see its README)


def run_uiaa(*args: str, input: bytes | None = None, cwd: Path | None = None, env: dict | None = None,
             timeout: float = 600, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m uiaa_cli ARGS`` and capture its stdout and stderr (bytes).

    The commands that may load torch run in a fork of this worker's fork server (tests/forkserver.py:
    torch imported once), unless ``fresh`` or unless ``env`` changes what a fork cannot; the others,
    which a fork would not speed up, in a new interpreter."""
    full_env = {**os.environ, **(env or {})}
    command = [sys.executable, "-m", "uiaa_cli", *map(str, args)]
    server = fork_server() if not fresh and command[3:4] and command[3] in TORCH_COMMANDS else None
    if server is not None:
        done = server.run(command, input=input, cwd=str(cwd or os.getcwd()), env=full_env, timeout=timeout)
        if done is not None:
            return done
    return subprocess.run(command, input=input, cwd=cwd, env=full_env, capture_output=True, timeout=timeout)


# Forking the server (some 800 MB of pages mapped) costs about what a new interpreter spends on the
# imports of labels or evaluate, and saves the 6-7 s of CPU that torch and torchvision cost.
TORCH_COMMANDS = ("train", "predict", "convert", "rate")
_SERVERS: dict[str, Server] = {}


def fork_server(name: str = "worker", env: dict[str, str] | None = None) -> Server | None:
    """This worker's fork server ``name``, started at first use in ``env`` (default: the worker's);
    None when UIAA_TEST_NO_FORKSERVER=1 (every command then starts a new interpreter)."""
    if os.environ.get("UIAA_TEST_NO_FORKSERVER") == "1":
        return None
    if name not in _SERVERS:
        _SERVERS[name] = Server(env)
        atexit.register(_SERVERS[name].stop)
    return _SERVERS[name]


@pytest.fixture
def uiaa():
    return run_uiaa


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Excerpts of AVA.txt, AVA's test list and KonIQ-10k shipped in tests/data (no ../shared needed)."""
    return TEST_DATA


@pytest.fixture
def no_torch(tmp_path: Path) -> dict:
    """An environment in which ``import torch`` fails, as on a machine without torch. Every attempt,
    in any process, leaves a line in ``tmp_path / "torch_imported"`` (see the ``torch_attempts`` fixture)."""
    fake = tmp_path / "no_torch"
    marker = tmp_path / "torch_imported"
    for name in ("torch", "torchvision"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(
            f"import os\nwith open({str(marker)!r}, 'a') as f:\n    f.write(str(os.getpid()) + '\\n')\n"
            f"raise ImportError('{name} is absent in this test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}


@pytest.fixture
def torch_attempts(tmp_path: Path):
    """How many times processes under the ``no_torch`` environment have tried to import torch."""
    marker = tmp_path / "torch_imported"
    return lambda: len(marker.read_text().splitlines()) if marker.exists() else 0


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private $XDG_CACHE_HOME for the whole run (predict keeps ONNX graphs there), inherited by the
    commands the tests run, so tests never write to the real ~/.cache."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder


# make test hands whole files to its two workers (--dist loadfile) in collection order. The files
# that start the most torch processes go first, longest first (minutes on 2 cores, measured
# 2026-12-03), so that neither worker is left alone with a long file at the end.
LONGEST_FIRST = ("test_training.py", "test_docs.py", "test_engines.py", "test_predict.py", "test_int8.py",
                 "test_outputs.py", "test_ray.py", "test_numbers.py", "test_predict_inputs.py",
                 "test_train_kind.py", "test_cache_store.py", "test_export.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order

