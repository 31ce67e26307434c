"""Files that are whole or absent: atomic writes, checksums, and cleaning up after killed writes.

Every file the project writes (configs, logs, weights, checkpoints, token caches) goes through here, so one
place decides what a crash or a full disk leaves behind: the old file or the new one, never half of one,
and at worst a hidden `.<name>.<random>.tmp` file that the next run in that folder removes.

Imports nothing from the project: config-free, so data/, training/ and tools.py can all use it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (the only way is to set it and restore it)


class WriteError(ValueError):
    """A write failed (disk full, read-only, no permission): one line naming the file; nothing old was lost."""


@contextlib.contextmanager
def reported_writes(path: Path):
    """Turn an OSError raised while writing `path` into a WriteError naming it (a ValueError: one clear line)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e}; the previous version (if any) is untouched. "
                         f"{_what_to_do(path, e)}") from None


def _what_to_do(path: Path, error: OSError) -> str:
    """A full disk names the disk and what is left on it; anything else (permissions, a read-only disk) says so."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return "Fix the permissions (or the path), then run again"
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:,.1f} MB are free there"
    except OSError:
        free = "its free space is unknown"
    return (f"Free space on the disk that holds {folder} ({free}; old runs, exports and token caches are what "
            f"this project keeps), then run again")


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename over path, so a crash never leaves a half-written file."""
    path = Path(path)
    with reported_writes(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        try:
            write(tmp)
            flush_to_disk(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def flush_to_disk(path) -> None:
    """fsync a written file, so that after a power cut the renamed file holds its bytes, not zeros."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def temp_folder(parent: Path) -> Path:
    """A hidden folder to build something in before renaming it into place (removed by remove_stale_temps)."""
    with reported_writes(parent):
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent, prefix=".", suffix=TMP_SUFFIX))


def remove_stale_temps(folder: Path, pattern: str = f".*{TMP_SUFFIX}") -> list[Path]:
    """Delete the hidden `.*.tmp` files and folders a killed write left in `folder`. Call it only while no
    one else writes there (holding the run's or the cache's lock)."""
    removed = []
    for stale in Path(folder).glob(pattern):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):  # e.g. a read-only cache someone else built
                stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


# --- checksums -------------------------------------------------------------------------------------------
# CRC-32 (zlib): detects random corruption (bit rot, a torn copy, bytes written over a file) at ~6 GB/s on
# one core, 3x faster than SHA-256, and it extends: crc32(b, crc32(a)) == crc32(a + b), so an appended
# token cache updates its checksum without re-reading what it had. It is not a defence against tampering.
CHECKSUM = "crc32"
_READ_BYTES = 1 << 24


def checksum(buffers, start: int = 0) -> int:
    """CRC-32 of the concatenated buffers (bytes, memoryviews, contiguous numpy arrays), continuing `start`."""
    crc = start
    for buffer in buffers:
        crc = zlib.crc32(buffer, crc)
    return crc


def file_checksum(path: Path, start_byte: int = 0, stop_byte: int | None = None, start: int = 0) -> int:
    """CRC-32 of bytes [start_byte, stop_byte) of a file, read in pieces (bounded memory)."""
    crc = start
    with open(path, "rb") as f:
        f.seek(start_byte)
        left = None if stop_byte is None else stop_byte - start_byte
        while left is None or left > 0:
            piece = f.read(_READ_BYTES if left is None else min(_READ_BYTES, left))
            if not piece:
                break
            crc = zlib.crc32(piece, crc)
            if left is not None:
                left -= len(piece)
    return crc
