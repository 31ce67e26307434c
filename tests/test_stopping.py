"""Stopping keeps the work: SIGINT, SIGTERM and SIGUSR1, delivered for real to a real train.py, end in a
checkpoint at a step boundary, one line, exit code 128 + signal, and a --resume that gives the same log rows as
an uninterrupted run. A signal before the run folder is written changes nothing and says so; a second signal
while the checkpoint is written leaves it whole.

The learning rate is constant (lr_min = lr_max, no warmup), so a run may be started with a huge max_iters, be
stopped wherever the signal lands, and resume to a shorter max_iters with the same rows as the twin."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from machinery.run import runs
from machinery.run.checkpoint import latest_checkpoint
from tests.conftest import SAMPLE_DATA
from tests.helpers import deterministic, read_log

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
EVERY = 4  # eval_interval


def args(cache: Path, name: str, **extra) -> list[str]:
    values = dict(dim=32, num_layers=1, num_q_heads=2, num_kv_heads=2, max_seq_len=16, tokenizer="bpe_tinyStories",
                  vocab_len=512, dataset=str(SAMPLE_DATA / "tinystories"), cache_dir=str(cache), micro_batch_size=2,
                  max_iters=100_000, eval_interval=EVERY, eval_batches=1, checkpoint_interval=100_000,
                  warmup_iters=0, lr_max=3e-3, lr_min=3e-3, dtype="float32", device="cpu", model_name=name)
    values.update(extra)
    return [f"--{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """An uninterrupted run of 400 steps: (its log rows, the token cache the others share)."""
    root = tmp_path_factory.mktemp("twin")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPLATEGPT_TRAINED_DIR", str(root / "trained"))
        assert train.main(args(root / "cache", "twin", max_iters=400)) == 0
    return deterministic(read_log(root / "trained" / "twin")), root / "cache"


def start(argv: list[str], trained: Path) -> subprocess.Popen:
    """A train process in its own session, with SIGINT at its default (a background job of a non-interactive
    shell inherits SIGINT ignored, and a process keeps an ignored SIGINT ignored)."""
    env = dict(os.environ, TEMPLATEGPT_TRAINED_DIR=str(trained), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def caught(pid: int) -> set[int]:
    """The signals process pid has handlers for (/proc/<pid>/status SigCgt)."""
    mask = next(int(line.split()[1], 16) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("SigCgt:"))
    return {n for n in range(1, 64) if mask >> (n - 1) & 1}


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-2000:]}"
    assert path.exists(), "the run wrote no log in time"


def resume_and_compare(trained: Path, name: str, stopped_at: int, twin_rows: list[dict], cache: Path,
                       monkeypatch) -> None:
    """--resume to the next evaluation after the stop plus one: the rows equal the twin's up to there."""
    end = (stopped_at // EVERY + 2) * EVERY
    assert end <= 400, f"stopped at step {stopped_at}, beyond the twin"
    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(trained))
    assert train.main(args(cache, name, max_iters=end) + ["--resume"]) == 0
    assert deterministic(read_log(trained / name)) == [r for r in twin_rows if int(r["step"]) <= end]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_a_signal_saves_a_checkpoint_and_resume_is_exact(sig, twin, tmp_path, monkeypatch):
    """Before the first regular checkpoint (step 100,000 here): today's Ctrl-C would lose everything."""
    twin_rows, cache = twin
    trained = tmp_path / "trained"
    proc = start([sys.executable, "train.py", *args(cache, "run")], trained)
    try:
        wait_for(trained / "run" / "log_data.csv", proc)  # training: the first evaluation is written
        assert sig in caught(proc.pid) and {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1} <= caught(proc.pid)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {sig.name} at step ") and "Traceback" not in err, err[-2000:]
    step = int(last.split(" at step ")[1].split(":")[0])
    checkpoint = latest_checkpoint(trained / "run")
    assert checkpoint.name == f"step_{step}" and str(checkpoint) in last
    assert "continue with: python train.py --model_name=run --resume" in last
    resume_and_compare(trained, "run", step, twin_rows, cache, monkeypatch)


# A real train.py process that signals itself at a chosen point (the timing a test cannot hit from outside).
SELF_SIGNAL = """
import os, signal, sys
import train
from machinery.run import checkpoint, runs
where, first, second = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3]

def signal_first(real):
    def wrapped(*a, **k):
        os.kill(os.getpid(), first)
        return real(*a, **k)
    return wrapped

if where == "loading data":
    train.load_data = signal_first(train.load_data)
elif where == "writing the run folder":
    runs.write_description = signal_first(runs.write_description)
else:  # after step 5
    real_step = train.train_step
    train.train_step = lambda step, *a, **k: (real_step(step, *a, **k), step == 4 and os.kill(os.getpid(), first))[0]
if second != "none":  # every checkpoint write is hit by a second signal half-way
    real_save = checkpoint.torch.save
    def save_with_a_second_signal(obj, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"half")
        os.kill(os.getpid(), getattr(signal, second))
        return real_save(obj, path, *a, **k)
    checkpoint.torch.save = save_with_a_second_signal
sys.exit(train.main(sys.argv[4:]))
"""


def self_signalled(trained: Path, cache: Path, where: str, first: str, second: str = "none"):
    proc = start([sys.executable, "-c", SELF_SIGNAL, where, first, second, *args(cache, "run")], trained)
    out, err = proc.communicate(timeout=180)
    return proc.returncode, err


def test_a_signal_before_training_changes_nothing_and_says_so(twin, tmp_path):
    trained = tmp_path / "trained"
    code, err = self_signalled(trained, twin[1], "loading data", "SIGTERM")
    assert code == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"stopped by SIGTERM before training began: nothing was written to "
                                            f"{trained / 'run'}; run the same command again")
    assert not (trained / "run").exists()


def test_a_signal_while_the_run_folder_is_written_says_how_to_start_again(twin, tmp_path, monkeypatch):
    """Between writing the run's description and its first step: nothing trained, no checkpoint (a step-0 one
    would not resume exactly: torch initializes an empty optimizer state with one zero-lr step)."""
    trained = tmp_path / "trained"
    code, err = self_signalled(trained, twin[1], "writing the run folder", "SIGUSR1")
    assert code == 138, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"stopped by SIGUSR1 before the first step: nothing was trained, so no "
                                            f"checkpoint was written; start it again with --overwrite "
                                            f"({trained / 'run'} holds only its description)")
    assert runs.list_runs(trained) == ["run"] and latest_checkpoint(trained / "run") is None
    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(trained))
    assert train.main(args(twin[1], "run", max_iters=EVERY) + ["--overwrite"]) == 0
    assert deterministic(read_log(trained / "run")) == twin[0][:1]


def test_a_second_signal_while_saving_leaves_the_checkpoint_whole(twin, tmp_path, monkeypatch):
    trained = tmp_path / "trained"
    code, err = self_signalled(trained, twin[1], "after step 5", "SIGTERM", second="SIGINT")
    assert code == 143, err[-2000:]
    assert "SIGINT again: already stopping" in err and "Traceback" not in err
    assert "stopped by SIGTERM at step 5: checkpoint saved in" in err.strip().splitlines()[-1]
    checkpoint = latest_checkpoint(trained / "run")
    assert checkpoint.name == "step_5" and json.loads((checkpoint / "checksums.json").read_text())["step"] == 5
    assert not list(trained.rglob("*.tmp"))
    resume_and_compare(trained, "run", 5, twin[0], twin[1], monkeypatch)


def test_under_torchrun_one_process_getting_the_signal_stops_all_at_one_step(twin, tmp_path):
    """Slurm or a spot machine may signal only some processes: the others learn it at the next step boundary,
    and every process takes part in the checkpoint (a collective: it would hang if one had stopped alone)."""
    trained = tmp_path / "trained"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = start([*launcher, "train.py", *args(twin[1], "run")], trained)
    try:
        wait_for(trained / "run" / "log_data.csv", proc)
        children = [int(pid) for task in Path(f"/proc/{proc.pid}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
        rank_1 = next(pid for pid in children if b"RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes())
        os.kill(rank_1, signal.SIGUSR1)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    stopped = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert len(stopped) == 1 and stopped[0].startswith("stopped by SIGUSR1 at step "), err[-3000:]
    step = int(stopped[0].split(" at step ")[1].split(":")[0])
    assert latest_checkpoint(trained / "run").name == f"step_{step}"
    assert "torchrun (as before) train.py --model_name=run --resume" in stopped[0]
    assert "exitcode  : 138" in err  # torchrun's report (it ends the other process once one has exited)
