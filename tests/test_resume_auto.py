"""train.py --resume=auto, the flag the Slurm scripts restart jobs with: the same command starts a run,
continues it from its checkpoint (exactly), starts again a run killed before its first checkpoint, and
never replaces a different run or a finished one."""
from __future__ import annotations

import json
import shutil

import pytest

import train
from tests.helpers import deterministic, read_log, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_auto_starts_then_continues_exactly(sample_data, data_cache, trained_dir, capsys):
    args = tiny_args(sample_data, data_cache, max_iters=8, eval_interval=2, checkpoint_interval=4) + ["--resume=auto"]
    assert train.main(args) == 0  # no folder yet: a start (a job's first start)
    assert "resuming" not in capsys.readouterr().out
    run = trained_dir / "run"
    full = deterministic(read_log(run))
    # roll the run back to its step-4 checkpoint, as if the job had been stopped after writing it
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 4, "dir": "step_4"}))
    shutil.rmtree(run / "checkpoints" / "step_8")
    assert train.main(args) == 0  # the same command continues
    assert "resuming run from step 4" in capsys.readouterr().out
    assert deterministic(read_log(run)) == full
    assert train.main(args) == 0  # a finished run: nothing left to train, nothing changes
    assert "resuming run from step 8" in capsys.readouterr().out
    assert deterministic(read_log(run)) == full


def test_auto_starts_again_a_run_killed_before_its_first_checkpoint(sample_data, data_cache, trained_dir, capsys):
    args = tiny_args(sample_data, data_cache, max_iters=6, eval_interval=2, checkpoint_interval=100)
    assert train.main(args) == 0
    full = deterministic(read_log(trained_dir / "run"))
    shutil.rmtree(trained_dir / "run" / "checkpoints")  # as if killed at step 4: a log and weights, no checkpoint
    rows = (trained_dir / "run" / "log_data.csv").read_text().splitlines()
    (trained_dir / "run" / "log_data.csv").write_text("\n".join(rows[:3]) + "\n")
    assert train.main(args + ["--resume=auto"]) == 0
    assert deterministic(read_log(trained_dir / "run")) == full


@pytest.mark.parametrize("change, message", [
    (["--lr_max=1e-2"], "was started with other settings (lr_max: 0.003 -> 0.01)"),
    ([], "already reached max_iters=6"),
])
def test_auto_never_replaces_another_or_a_finished_run(change, message, sample_data, data_cache, trained_dir,
                                                         capsys):
    args = tiny_args(sample_data, data_cache, max_iters=6, eval_interval=2, checkpoint_interval=100)
    assert train.main(args) == 0
    shutil.rmtree(trained_dir / "run" / "checkpoints")  # finished, its checkpoints deleted (as the shipped runs)
    if change:  # and unfinished
        rows = (trained_dir / "run" / "log_data.csv").read_text().splitlines()
        (trained_dir / "run" / "log_data.csv").write_text("\n".join(rows[:2]) + "\n")
    before = snapshot(trained_dir)
    capsys.readouterr()
    assert train.main(args + change + ["--resume=auto"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert snapshot(trained_dir) == before


@pytest.mark.parametrize("extra", [["--model_name="], ["--overwrite"]])
def test_auto_needs_a_name_and_no_overwrite(extra, sample_data, data_cache, trained_dir, capsys):
    assert train.main(tiny_args(sample_data, data_cache) + extra + ["--resume=auto"]) == 2
    assert "--resume=auto needs --model_name=NAME and no --overwrite" in capsys.readouterr().err
    assert not trained_dir.exists()


def test_auto_resume_keeps_the_saved_configs_under_a_preset(sample_data, data_cache, trained_dir, capsys):
    """A job's command line carries --preset on every start; on a restart the run's saved configs count."""
    args = ["--preset=llama3_atto", *tiny_args(sample_data, data_cache, max_iters=4, checkpoint_interval=2)]
    assert train.main(args + ["--resume=auto"]) == 0
    saved = json.loads((trained_dir / "run" / "train_config.json").read_text())
    assert train.main(args + ["--resume=auto", "--max_iters=6"]) == 0
    assert "resuming run from step 4" in capsys.readouterr().out
    assert json.loads((trained_dir / "run" / "train_config.json").read_text()) == {**saved, "max_iters": 6}
