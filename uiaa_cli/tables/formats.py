"""What an input is, by its content as well as its name: HDF5, Parquet, text, or something refused.

Every reader asks here first, so a compressed file, an archive or random bytes is one line naming
the file, never a parse of binary garbage. UTF-8 text may start with a byte-order mark.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from uiaa_cli.errors import UiaaError, at

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"

# compressed or archived data: refused with a hint (decompress it first), never parsed as text
COMPRESSED = (
    (b"\x1f\x8b", "gzip", "gunzip"),
    (b"BZh", "bzip2", "bunzip2"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
    (b"PK\x03\x04", "zip", "unzip"),
    (b"7z\xbc\xaf\x27\x1c", "7z", "7z x"),
)


def sniff(head: bytes) -> str:
    """``h5``, ``parquet`` or ``text`` from a file's first bytes (at least 8 of them when there are)."""
    if head.startswith(HDF5_SIGNATURE):
        return "h5"
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    return "text"


def read_head(path: str, size: int = 8) -> bytes:
    """The first ``size`` bytes of a regular file (``b""`` for stdin, a pipe or an unreadable file)."""
    import os
    import stat

    if path == "-":
        return b""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return b""  # reading a pipe's first bytes would take them from the real reader
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def check_text(data: bytes, path: str, first_line: int = 1) -> bytes:
    """``data`` without a leading byte-order mark, if it is UTF-8 text; else a one-line error.

    Compressed data says how to decompress it; other binary data or bytes that are not UTF-8 name
    the line where they start.
    """
    if first_line == 1:
        for magic, name, tool in COMPRESSED:
            if data.startswith(magic):
                raise UiaaError(f"{name}-compressed: decompress it first ({tool})", where=at(path))
        if data.startswith(UTF8_BOM):
            data = data[len(UTF8_BOM):]
    nul = data.find(b"\0", 0, 1 << 16)
    if nul >= 0:
        raise UiaaError("binary data, not a text table", where=at(path, first_line + data.count(b"\n", 0, nul)))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise UiaaError(f"bytes that are not UTF-8 text ({data[e.start:e.start + 4]!r}...): save it as UTF-8",
                        where=at(path, line)) from None
    return data


def require_inputs(*paths: str | None) -> None:
    """A one-line "no such file" for the first of ``paths`` that does not exist (``None`` and ``-`` pass).

    Commands that import torch call this first, so a typo costs milliseconds, not torch's start-up.
    """
    for path in paths:
        if path is not None and path != "-" and not os.path.exists(path):
            raise UiaaError("no such file", where=at(path))


def file_sha256(source: str | os.PathLike | BinaryIO) -> str:
    """The SHA-256 of a file's content (a path, or a file open for binary reading, read from where it
    is), in 1 MiB blocks: what a cache, a resumed predict and an exported graph record of the file
    they were made from."""
    import hashlib

    if not hasattr(source, "read"):
        with open(source, "rb") as f:
            return file_sha256(f)
    digest = hashlib.sha256()
    for block in iter(lambda: source.read(1 << 20), b""):  # hashlib.file_digest is Python >= 3.11
        digest.update(block)
    return digest.hexdigest()
