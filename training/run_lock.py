"""One process per run folder: a run holds an exclusive lock for its lifetime, so a second train.py on the
same --model_name (even with --overwrite or --resume) is refused instead of interleaving its files. The
lock is the kernel's (flock): a killed process's lock disappears with it and the next run takes over the
file it left behind; a run that ends removes its lock file."""
from __future__ import annotations

import os
from pathlib import Path


class RunInUse(Exception):
    """Another live process holds the run folder."""


class RunLock:
    """`with RunLock(run_dir): ...` holds `.<name>.lock` beside the folder (it survives --overwrite)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"
        self._fd = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not protected from each other there
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunInUse(f"{self.run_dir} is in use by a running train.py (process {holder}): wait for it "
                               f"to finish or stop it, or choose another --model_name") from None
            if self._is_current(fd):
                break
            os.close(fd)  # the holder released and removed this file meanwhile: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def _is_current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.unlink(self.path)  # while still locked, so nobody can take a file that is going away
            os.close(self._fd)    # closing releases the lock
            self._fd = None
