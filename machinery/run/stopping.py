"""Stopping a run on a signal without losing its work: Ctrl-C (SIGINT), SIGTERM (what `kill`, Docker and cloud
spot machines send) and SIGUSR1 (what Slurm sends ahead of a time limit with `--signal=USR1@120`).

    with stopping.on_signals(run_dir) as stop:   # train.py
        ...set up, load data (a signal here stops at once: nothing has been written to the run yet)...
        stop.defer(machine.dist)                 # from here on a signal waits for the step boundary
        for step in ...:
            if stop.agreed():
                raise stop.after_saving(state.step, save)   # checkpoint, one line, exit code 128 + signal

Before the run folder is written, a signal stops the process at once: nothing of the run has changed, and the
message says so. Once the folder is being written, the handler only records the signal; the loop finishes the
current step, writes a checkpoint and stops, and `--resume` continues exactly. Further signals while that checkpoint
is written are only acknowledged (kill -9 still works, and loses nothing: every write is atomic).

Exit codes (the shell's 128 + signal number): 130 SIGINT, 143 SIGTERM, 138 SIGUSR1. The last line says whether a
checkpoint was saved; `--resume` works whenever trained/<run>/checkpoints/ holds one.

Under torchrun every process must stop at the same step, even when only one got the signal: at each step boundary
the processes share their flags in a one-number all-reduce on the CPU (gloo: no device sync; tens of microseconds
on one machine, next to a step's milliseconds). A single process only reads its flag.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from machinery.fileio import WriteError

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


def exit_code(signum: int) -> int:
    return 128 + signum


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal (or Ctrl-C); `message` (None on processes other than the main one) says what
    was kept and how to continue."""

    def __init__(self, signum: int, message: str | None = None):
        super().__init__(message or signal.Signals(signum).name)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


class Stopper:
    """Signal handlers for one training run; see the module docstring."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.signum: int | None = None      # the first signal received
        self.deferred = False                # True once the run folder is being written
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self._dist, self._group = None, None
        self._previous: dict[int, object] = {}

    # --- the handlers ---------------------------------------------------------------------------------------
    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; train() in a thread keeps Python's defaults
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue  # e.g. SIGINT of a background job (nohup, `&`): whoever started us asked for that
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if not self.deferred:
            raise Stopped(signum)  # nothing of the run written yet: stop at once
        name = signal.Signals(signum).name
        note = (f"{name} received: finishing this step, then saving a checkpoint and stopping" if first else
                f"{name} again: already stopping; the checkpoint is being written and stays whole")
        if self.is_main:
            os.write(2, f"\n{note}\n".encode())  # os.write: safe inside a handler (print could be mid-write)

    # --- the loop's side ------------------------------------------------------------------------------------
    def defer(self, dist) -> None:
        """From here on (the run folder is about to be written) a signal stops at the next step boundary."""
        self._dist = dist
        self.deferred = True

    def agreed(self) -> bool:
        """Whether to stop at this step boundary: this process got a signal, or under torchrun any process did
        (all of them then stop at the same boundary, knowing which signal it was)."""
        shared = self._largest(self.signum or 0)
        if shared and self.signum is None:
            self.signum = shared
        return bool(shared)

    def _largest(self, value: int) -> int:
        """The largest of every process's value (a one-number all-reduce on the CPU; value itself for one)."""
        if self._dist is None or not self._dist.enabled:
            return value
        import torch.distributed as dist
        if self._group is None:  # the flags travel on the CPU: a gloo group unless the default one is gloo
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        flag = torch.tensor([value])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())

    def after_saving(self, step: int, save) -> Stopped:
        """Write the checkpoint of `step` (save(); skipped when one already holds it), then return the Stopped
        to raise, with its one-line message. Further signals meanwhile are only acknowledged (deferred)."""
        from machinery.run.checkpoint import latest_checkpoint
        name = signal.Signals(self.signum).name
        if step == 0:  # a fresh start stopped before its first step: nothing trained, nothing to keep
            return Stopped(self.signum, f"stopped by {name} before the first step: nothing was trained, so no "
                                        f"checkpoint was written; start it again with --overwrite ({self.run_dir} "
                                        f"holds only its description)" if self.is_main else None)
        newest = latest_checkpoint(self.run_dir) if self.is_main else None
        if self._largest(int(self.is_main and (newest is None or newest.name != f"step_{step}"))):  # main decides
            save()  # every process takes part
            newest = latest_checkpoint(self.run_dir) if self.is_main else None
        return Stopped(self.signum, f"stopped by {name} at step {step}: checkpoint saved in {newest}; continue "
                                    f"with: {resume_command(self.run_dir, self._dist)}" if self.is_main else None)

    # --- what an interruption outside the loop kept ---------------------------------------------------------
    def explain(self, interrupt: KeyboardInterrupt) -> Stopped:
        """A Stopped with a true message for an interruption that did not come through after_saving."""
        if isinstance(interrupt, Stopped) and interrupt.message is not None:
            return interrupt
        signum = interrupt.signum if isinstance(interrupt, Stopped) else signal.SIGINT
        name = signal.Signals(signum).name
        if not self.is_main:
            return Stopped(signum)
        if not self.deferred:
            return Stopped(signum, f"stopped by {name} before training began: nothing was written to "
                                   f"{self.run_dir}; run the same command again")
        how = f"stopped by {name}" if isinstance(interrupt, Stopped) else "interrupted"
        return Stopped(signum, f"{how} while writing the run: {kept(self.run_dir, self._dist)}")


def kept(run_dir: Path, dist=None) -> str:
    """What `--resume` can do with run_dir now: continue from its newest complete checkpoint, or nothing."""
    from machinery.run.checkpoint import latest_checkpoint
    try:
        newest = latest_checkpoint(run_dir) if Path(run_dir).is_dir() else None
    except ValueError as e:
        return f"its newest checkpoint is damaged ({e})"
    if newest is None and not Path(run_dir).is_dir():
        return f"no run folder was left at {run_dir}; run the same command again"
    if newest is None:
        return (f"{run_dir} has no checkpoint yet, so --resume cannot continue it: start it again with "
                f"--overwrite (this replaces it)")
    return f"the newest complete checkpoint is {newest}; continue with: {resume_command(run_dir, dist)}"


def resume_command(run_dir: Path, dist=None) -> str:
    """The command that continues run_dir (its configs hold every setting)."""
    command = f"train.py --model_name={Path(run_dir).name} --resume"
    if dist is not None and dist.enabled:
        return f"torchrun (as before) {command}"
    return f"python {command}"


@contextmanager
def on_signals(run_dir: Path):
    """Stopper's handlers for the block; any interruption leaves it as a Stopped whose message is true."""
    stop = Stopper(run_dir)
    stop.install()
    try:
        yield stop
    except KeyboardInterrupt as e:
        raise stop.explain(e) from None
    except WriteError as e:  # a full disk while writing the run: say what --resume can do once there is space
        if not stop.deferred:
            raise
        raise WriteError(f"{e}: {kept(run_dir, stop._dist)}") from None
    finally:
        stop.restore()
