"""Test hook, not part of the template: with tests/slurm_hook on PYTHONPATH and TEMPLATEGPT_TEST_PAUSE=STEPS:FOLDER
(steps separated by '+', e.g. 6+13:/tmp/marks), each training process of train.py stops before each of those
steps, once per step and rank, writes FOLDER/paused_<step>_rank<rank> and waits for a signal; then it goes on (and
train.py's own handler, which the signal also reached, stops the run at the next step boundary). So a test can
signal, requeue or cancel a real Slurm job at a known step, however fast or slow the machine is."""
import os

_SPEC = os.environ.get("TEMPLATEGPT_TEST_PAUSE", "")
if _SPEC and "RANK" in os.environ:  # the training processes torchrun starts
    import select
    import signal
    from pathlib import Path

    import training.step

    _steps, _, _folder = _SPEC.partition(":")
    _PAUSES = {int(s) for s in _steps.split("+") if s}
    _RANK = os.environ.get("RANK", "0")
    _train_step = training.step.train_step

    def _paused_train_step(step, *args, **kwargs):
        marker = Path(_folder) / f"paused_{step}_rank{_RANK}"
        if step in _PAUSES and not marker.exists():
            read, write = os.pipe()
            os.set_blocking(write, False)
            signal.set_wakeup_fd(write)  # a signal from now on, even before select, writes a byte here
            marker.write_text(str(os.getpid()))
            select.select([read], [], [])
            signal.set_wakeup_fd(-1)
            os.close(read)
            os.close(write)
        return _train_step(step, *args, **kwargs)

    training.step.train_step = _paused_train_step
