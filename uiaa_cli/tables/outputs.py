"""Every output path of every command: checked before the work, written safely, locked while built.

- :func:`check_output` runs before any work: ``-`` (stdout), a new file in a writable folder, an
  existing regular file, a device or a named pipe are fine; a folder, a missing parent folder, a
  read-only place, or the same file as one of the inputs (by real path, symlinks followed) is a
  one-line :class:`UiaaError` naming the path.
- :func:`atomic_output` writes a regular file under a temporary name in the real target's folder
  and renames it when complete (a crash never leaves half a file under the final name); a device or
  a named pipe is written through, never replaced (``-o /dev/null`` stays a device); a symlink's
  target is written and the link kept.
- :func:`output_lock` keeps two runs from building the same output at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from uiaa_cli.errors import UiaaError, at

# errors of the writing side that are the output's fault, reported as one line naming it
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                errno.ENOTDIR, errno.EISDIR, errno.ENOENT}


def is_special(path: str | os.PathLike) -> bool:
    """True for an existing device, named pipe or socket (symlinks followed): written through."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), what: str = "output",
                 stdout: bool = True, regular: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written or would destroy an input.

    ``what`` names the output in messages ("output", "plot", "cache"); ``stdout=False`` for outputs
    that must be files (``-`` is then an error); ``regular=True`` for outputs that are built in place
    and renamed (an HDF5 cache): a device or pipe is then refused, since renaming onto it would
    replace it.
    """
    path = str(path)
    if path == "-":
        if not stdout:
            raise UiaaError(f"the {what} must be a file, not stdout", where=at(path, output=True))
        return
    real = os.path.realpath(path)
    if regular and is_special(real):
        raise UiaaError(f"is a device or pipe: the {what} must be a regular file", where=at(path))
    if is_special(real):  # written through, never replaced: nothing to destroy
        if not os.access(real, os.W_OK):
            raise UiaaError("not writable", where=at(path))
        return
    for source in inputs:
        source = str(source)
        if source == "-":
            continue
        if os.path.realpath(source) == real or _same_file(source, real):
            raise UiaaError(f"the {what} is also an input: it would be destroyed; choose another name", where=at(path))
    if os.path.isdir(real):
        raise UiaaError(f"is a folder: give the {what} a file name", where=at(path))
    parent = os.path.dirname(real) or "."
    if not os.path.isdir(parent):
        shown = parent if os.path.islink(path) else os.path.dirname(path) or "."  # a link: where it points
        raise UiaaError(f"no such folder for the {what} {os.path.basename(path)} (create it first)",
                        where=at(shown))
    _check_writable_folder(parent, path)


def check_output_folder(path: str | os.PathLike, *, what: str = "output folder", create: bool = True) -> Path:
    """A folder to write several files into (``train --out``): created if missing (``create``), else
    only checked to be creatable; a file in its place, or a read-only place, is a one-line error."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UiaaError(f"exists and is not a folder: give the {what} a new or existing folder", where=str(folder))
    if not create:
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent if str(existing.parent) else Path(".")
        if not existing.is_dir():
            raise UiaaError(f"cannot create the {what}: {existing} is not a folder", where=str(folder))
        _check_writable_folder(str(existing), str(folder))
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UiaaError(f"cannot create the {what}: {e.strerror or e}", where=str(folder)) from None
    _check_writable_folder(str(folder), str(folder))
    return folder


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_writable_folder(folder: str, shown: str) -> None:
    """A trial file in ``folder`` (root ignores permission bits, so ``os.access`` alone is not enough)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UiaaError(f"cannot write in {folder}: permission denied or read-only", where=shown)
    try:
        fd, trial = tempfile.mkstemp(prefix=".uiaa-check.", dir=folder)
    except OSError as e:
        raise UiaaError(f"cannot write in {folder}: {e.strerror or e}", where=shown) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(trial)


def write_error(e: OSError, path: str | os.PathLike) -> UiaaError:
    """A write failure as the one-line error naming the output."""
    why = os.strerror(e.errno) if e.errno else (e.strerror or str(e)).splitlines()[0]
    return UiaaError(f"cannot write: {why}", where=at(str(path), output=True))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, seekable: bool = False) -> Iterator[Path]:
    """The path to write ``path``'s content to; see the module doc.

    Regular (or new) file: a temporary file beside the real target, renamed onto it when the block
    completes, removed if it fails. Device or named pipe: the path itself (written through).
    ``seekable=True`` (HDF5) for a device or pipe: a temporary file elsewhere whose bytes are copied
    through at the end. Failures to write (full disk, read-only) become a one-line UiaaError.
    """
    real = Path(os.path.realpath(path))
    if is_special(real):
        if not seekable:
            try:
                yield real
            except OSError as e:
                if e.errno in WRITE_ERRNOS:
                    raise write_error(e, path) from None
                raise
            return
        with tempfile.TemporaryDirectory(prefix="uiaa-") as folder:
            tmp = Path(folder) / real.name
            yield tmp
            try:
                with open(tmp, "rb") as src, open(real, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except OSError as e:
                if e.errno in WRITE_ERRNOS:
                    raise write_error(e, path) from None
                raise
        return
    try:
        fd, name = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".part", dir=real.parent)
    except OSError as e:
        raise write_error(e, path) from None
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets the usual permissions
        yield tmp
        os.replace(tmp, real)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.errno in WRITE_ERRNOS:
            raise write_error(e, path) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def lock_path(path: str | os.PathLike) -> Path:
    """``.NAME.lock`` beside the real output."""
    real = Path(os.path.realpath(path))
    return real.parent / f".{real.name}.lock"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on building ``path`` (a file or a folder) for the block.

    A second run on the same output fails at once with "another uiaa run (pid N) is writing PATH".
    The lock is ``flock`` on a hidden ``.NAME.lock`` beside the output, removed at the end; the
    kernel releases it when a run dies, so a killed run never blocks the next one. Devices and
    pipes are not locked.
    """
    import fcntl

    if str(path) == "-" or is_special(path):
        yield
        return
    lock = lock_path(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UiaaError(f"cannot create the lock file {lock}: {e.strerror or e}", where=str(path)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UiaaError(f"another uiaa run (pid {holder}) is writing {path}; wait for it to finish",
                            where=str(path)) from None
        try:  # the holder before us may have removed the file we locked: lock the one in place
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
