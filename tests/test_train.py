"""train.py: command line, run folder, exact resume (kill -9 included), non-finite loss, loss regression."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tools
import train
from machinery.run import runs
from machinery.run.checkpoint import latest_checkpoint
from machinery.run.run_log import COLUMNS
from tests.helpers import deterministic, read_log, tiny_args

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tests" / "baselines" / "loss_curve.json"


def test_run_folder_holds_everything(sample_data, data_cache, trained_dir):
    assert train.main(tiny_args(sample_data, data_cache)) == 0
    run = trained_dir / "run"
    for name in ("model_config.json", "train_config.json", "model.safetensors", "log_data.csv",
                 "training_curves.png", "provenance.json", "summary.json"):
        assert (run / name).is_file(), name
    assert (run / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    rows = read_log(run)
    assert list(rows[0]) == COLUMNS
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    assert int(rows[-1]["tokens"]) == 12 * 4 * 32
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])  # it learns
    assert all(float(r["tokens_per_sec"]) > 0 and float(r["grad_norm"]) > 0 for r in rows)
    assert all(float(r["wall_s"]) >= float(r["elapsed_s"]) and float(r["peak_memory_mb"]) > 0 for r in rows)
    assert latest_checkpoint(run).name == "step_12"
    saved = json.loads((run / "model_config.json").read_text())
    assert saved["vocab_len"] == 512 and saved["head_dim"] == 8
    # the saved weights are the best by validation loss and load back (never via pickle)
    model, tokenizer, model_cfg, train_cfg = tools.load_model(run)
    assert not model.training and train_cfg.model_name == "run"


def test_existing_run_is_refused_unless_resume_or_overwrite(sample_data, data_cache, trained_dir, capsys):
    args = tiny_args(sample_data, data_cache, max_iters=3)
    assert train.main(args) == 0
    assert train.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert train.main(args + ["--overwrite"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--lr_mx=1"], "Did you mean: lr_max"),
    (["--dim=abc"], "not a valid int"),
    (["--preset=nope"], "presets are"),
    (["--resume"], "--model_name"),
    (["--resume", "--overwrite", "--model_name=x"], "give one of them"),
    (["positional"], "--key=value"),
    (["--model_name=missing", "--resume"], "no model named"),
    (["--anneal_type=exp"], "'cos', 'lin', 'wsd'"),
])
def test_cli_errors_are_one_clear_line(argv, message, trained_dir, capsys):
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def read_curve(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "train_loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resume_after_interrupted_checkpoint_write_is_exact(sample_data, data_cache, trained_dir, monkeypatch):
    """A crash in the middle of writing a checkpoint loses nothing: resume continues from the previous one, and
    the training curve's rows after it (written before the crash) are dropped and made again."""
    assert train.main(tiny_args(sample_data, data_cache, name="straight", log_interval=1)) == 0

    import machinery.run.checkpoint as ckpt
    real_save, calls = torch.save, {"n": 0}

    def crash_on_second_checkpoint(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(path).write_bytes(b"half a file")
            raise KeyboardInterrupt  # the process dies here, mid-write
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", crash_on_second_checkpoint)
    assert train.main(tiny_args(sample_data, data_cache, name="crashed", log_interval=1)) == 130
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert latest_checkpoint(trained_dir / "crashed").name == "step_4"
    assert [int(r["step"]) for r in read_curve(trained_dir / "crashed")] == list(range(1, 9))
    assert train.main(tiny_args(sample_data, data_cache, name="crashed", log_interval=1) + ["--resume"]) == 0
    assert deterministic(read_log(trained_dir / "crashed")) == deterministic(read_log(trained_dir / "straight"))
    assert read_curve(trained_dir / "crashed") == read_curve(trained_dir / "straight")
    assert [int(r["step"]) for r in read_curve(trained_dir / "straight")] == list(range(1, 13))


def test_kill_9_then_resume_gives_identical_log(sample_data, data_cache, trained_dir):
    """kill -9 at an arbitrary moment after the first checkpoint; --resume reproduces the log bit for bit."""
    args = tiny_args(sample_data, data_cache, max_iters=24, checkpoint_interval=5, eval_interval=4, log_interval=2)
    assert train.main(args[:-1] + ["--model_name=straight"]) == 0

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "train.py", *args[:-1], "--model_name=killed"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = trained_dir / "killed" / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while not pointer.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = subprocess.run([sys.executable, "train.py", *args[:-1], "--model_name=killed", "--resume"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming killed from step" in resumed.stdout
    assert deterministic(read_log(trained_dir / "killed")) == deterministic(read_log(trained_dir / "straight"))
    assert read_curve(trained_dir / "killed") == read_curve(trained_dir / "straight")


@pytest.mark.parametrize("mode", ["stretch", "extend_tail", "restart_decay"])
def test_resume_with_more_steps_follows_resume_schedule_and_says_so(mode, sample_data, data_cache, trained_dir,
                                                                    capsys):
    """--resume --max_iters=N: the header says what the schedule does now, the lr of the added steps follows it,
    and train_config.json holds it (so a later --resume continues it)."""
    from training.schedule import lr_at
    args = tiny_args(sample_data, data_cache, log_interval=1)  # 12 steps, lr 3e-3 -> 3e-4
    assert train.main(args) == 0
    capsys.readouterr()
    assert train.main(args + ["--resume", "--max_iters=20", f"--resume_schedule={mode}"]) == 0
    out = capsys.readouterr().out
    assert f"schedule: max_iters 12 -> 20, resume_schedule={mode!r}: " in out
    saved = tools.load_configs(trained_dir / "run")[1]
    lrs = {int(r["step"]): float(r["lr"]) for r in read_curve(trained_dir / "run")}
    assert sorted(lrs) == list(range(1, 21))
    assert all(lrs[s] == lr_at(s - 1, saved) for s in range(13, 21))  # the saved config is the schedule used
    if mode == "stretch":
        assert lrs[13] > 3e-4 * 1.5 and "goes from 3.00e-04 to" in out  # the lr went back up
    elif mode == "extend_tail":
        assert saved.final_flat_iters == 8 and all(lrs[s] == 3e-4 for s in range(13, 21))
        assert all(lrs[s] == lr_at(s - 1, saved) for s in range(1, 13))  # and the decay before it, as it was
    else:  # the run had reached lr_min: a restarted decay from there stays at it
        assert (saved.decay_restart_step, saved.decay_restart_lr) == (12, 3e-4) and "--init_from" in out


def test_corrupt_checkpoint_is_one_clear_line(sample_data, data_cache, trained_dir, capsys):
    assert train.main(tiny_args(sample_data, data_cache, max_iters=4)) == 0
    (latest_checkpoint(trained_dir / "run") / "state.pt").write_bytes(b"not a checkpoint")
    assert train.main(tiny_args(sample_data, data_cache, max_iters=4) + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "is corrupt or not a checkpoint" in err and "--overwrite" in err and "Traceback" not in err


def test_unreachable_hub_is_one_clear_line(tmp_path, trained_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail at once, as without a network
    args = ["--dim=32", "--num_layers=1", "--vocab_len=512", "--dataset=someone/no-such-dataset",
            f"--cache_dir={tmp_path / 'cache'}", "--max_iters=2", "--warmup_iters=0", "--model_name=hub"]
    assert train.main(args) == 2
    # the last line is ours; earlier stderr may hold the hub library's own log warnings
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: could not reach the Hugging Face hub") and "--dataset=" in last


def test_non_finite_loss_stops_and_keeps_last_checkpoint(sample_data, data_cache, trained_dir, capsys):
    assert train.main(tiny_args(sample_data, data_cache, lr_max=1e6, lr_min=1e5, grad_clip=0, max_iters=40,
                                checkpoint_interval=1, eval_interval=1)) == 2
    err = capsys.readouterr().err
    assert "the run stopped" in err and "while the loss was still finite and falling" in err
    kept = latest_checkpoint(trained_dir / "run")
    assert kept is not None
    state = torch.load(kept / "state.pt", weights_only=True)
    assert math.isfinite(state["best_val"])


def test_an_op_without_a_deterministic_kernel_in_the_model_is_one_line_before_the_run_folder(
        sample_data, data_cache, trained_dir, capsys, monkeypatch):
    """The memory probe runs the model's first forward and backward before the run folder exists: an op without
    a deterministic kernel stops there, with the same one line, and leaves nothing behind."""
    from modules.model import Model

    def nondeterministic(*args, **kwargs):
        raise RuntimeError("scatter_add_cuda_kernel does not have a deterministic implementation, but you set "
                           "'torch.use_deterministic_algorithms(True)'. ...")
    monkeypatch.setattr(Model, "forward", nondeterministic)
    try:
        assert train.main(tiny_args(sample_data, data_cache, deterministic=True)) == 2
    finally:
        torch.use_deterministic_algorithms(False)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("error: --deterministic: scatter_add_cuda_kernel does not have a deterministic implementation "
                    "on cpu; add --deterministic=false: nothing was written")
    assert not (trained_dir / "run").exists()


def test_an_op_without_a_deterministic_kernel_is_one_clear_line(sample_data, data_cache, trained_dir, capsys,
                                                                monkeypatch):
    """--deterministic is strict (torch's warn-only mode would leave attention's backward nondeterministic on
    GPUs): an op that has no deterministic kernel stops the run with one line naming it."""
    def nondeterministic(*args, **kwargs):
        raise RuntimeError("nll_loss2d_forward_out_cuda_template does not have a deterministic implementation, but "
                           "you set 'torch.use_deterministic_algorithms(True)'. You can turn off determinism ...")
    monkeypatch.setattr(train, "train_step", nondeterministic)
    try:
        assert train.main(tiny_args(sample_data, data_cache, deterministic=True)) == 2
    finally:
        torch.use_deterministic_algorithms(False)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # at the first step there is no checkpoint: the message says so rather than sending the user to --resume
    assert last == ("error: --deterministic: nll_loss2d_forward_out_cuda_template does not have a deterministic "
                    f"implementation on cpu; add --deterministic=false: {trained_dir / 'run'} has no checkpoint yet, "
                    f"so --resume cannot continue it: start it again with --overwrite (this replaces it)")
    monkeypatch.setattr(train, "train_step", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="other"):  # any other error is not ours to rephrase
        train.main(tiny_args(sample_data, data_cache, name="other", deterministic=True))
    torch.use_deterministic_algorithms(False)


def test_config_flag_starts_a_new_run_from_saved_configs(sample_data, data_cache, trained_dir):
    assert train.main(tiny_args(sample_data, data_cache, max_iters=3)) == 0
    assert train.main([f"--config={trained_dir / 'run'}", "--model_name=child", "--qk_norm=true"]) == 0
    child = json.loads((trained_dir / "child" / "model_config.json").read_text())
    assert child["qk_norm"] is True and child["dim"] == 32


def test_grad_accumulation_matches_a_bigger_micro_batch(sample_data, data_cache, trained_dir):
    """2 micro-batches of 4 accumulate to the same update as one batch of 8 (sequential data, no dropout)."""
    common = dict(sampling="sequential", max_iters=6, eval_interval=3)
    assert train.main(tiny_args(sample_data, data_cache, name="big", micro_batch_size=8, **common)) == 0
    assert train.main(tiny_args(sample_data, data_cache, name="acc", micro_batch_size=4, grad_accum_steps=2,
                                **common)) == 0
    big, acc = read_log(trained_dir / "big"), read_log(trained_dir / "acc")
    for a, b in zip(big, acc):  # (validation batches differ: they are micro_batch_size rows each)
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-4)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-3)


def test_loss_curve_matches_stored_baseline(sample_data, data_cache, trained_dir):
    """A change that silently makes learning worse fails here. Regenerate deliberately with
    TEMPLATEGPT_UPDATE_BASELINE=1 when a change is meant to alter the curve."""
    assert train.main(tiny_args(sample_data, data_cache, max_iters=30, eval_interval=5, checkpoint_interval=30,
                                sampling="random", seed=7)) == 0
    curve = [float(r["val_loss"]) for r in read_log(trained_dir / "run")]
    if os.environ.get("TEMPLATEGPT_UPDATE_BASELINE") == "1":
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_text(json.dumps({"val_loss": curve}, indent=1) + "\n")
    expected = json.loads(BASELINE.read_text())["val_loss"]
    assert len(curve) == len(expected)
    for got, want in zip(curve, expected):
        assert got == pytest.approx(want, abs=0.02)
    assert curve[-1] < curve[0] - 0.5  # and it really learns


@pytest.mark.parametrize("field, names, value", [("optimizer", "OPTIMIZERS", "lion"),
                                                 ("anneal_type", "ANNEAL_TYPES", "exp")])
def test_a_choice_named_in_config_without_an_implementation_stops_training(field, names, value, sample_data,
                                                                         data_cache, trained_dir, monkeypatch, capsys):
    """Adding only a name to config.py's list must not silently train with another implementation."""
    import config
    monkeypatch.setattr(config, names, getattr(config, names) + (value,))
    assert train.main(tiny_args(sample_data, data_cache, **{field: value})) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{field}={value!r}" in last and "training/" in last
    assert not (trained_dir / "run").exists()


def test_training_curve_has_a_point_per_log_line(sample_data, data_cache, trained_dir):
    """A short run's plot shows a curve: the training loss of every log_interval line (train_loss.csv, as
    printed), validation at each evaluation."""
    from machinery.run.curves import training_curves_figure
    from machinery.run.run_log import TrainLossLog
    assert train.main(tiny_args(sample_data, data_cache, max_iters=12, eval_interval=6, log_interval=2)) == 0
    run = trained_dir / "run"
    curve = read_curve(run)
    assert list(curve[0]) == TrainLossLog.COLUMNS
    assert [int(r["step"]) for r in curve] == [2, 4, 6, 8, 10, 12]
    assert [int(r["tokens"]) for r in curve] == [s * 4 * 32 for s in (2, 4, 6, 8, 10, 12)]
    train_line, val_line = training_curves_figure(read_log(run), "run", curve).axes[0].lines
    assert list(train_line.get_xdata()) == [2, 4, 6, 8, 10, 12] and list(val_line.get_xdata()) == [6, 12]
    assert list(train_line.get_ydata()) == [float(r["train_loss"]) for r in curve]
    # a run from before train_loss.csv: the training curve is log_data.csv's mean between evaluations
    old_line = training_curves_figure(read_log(run), "run").axes[0].lines[0]
    assert list(old_line.get_xdata()) == [6, 12] and "between evaluations" in old_line.get_label()


def test_log_to_a_file_has_loss_lines_between_evaluations(sample_data, data_cache, trained_dir, capfd):
    """Output redirected (a log file, CI, a job scheduler: not a terminal): plain lines, no progress bar's
    carriage returns; a loss line every log_interval steps, evaluations in between."""
    args = tiny_args(sample_data, data_cache, max_iters=12, eval_interval=6, log_interval=2)
    assert train.main(args) == 0
    out, err = capfd.readouterr()
    text = out + err
    assert "\r" not in text
    lines = out.splitlines()
    loss_steps = [int(ln.split()[1].split("/")[0]) for ln in lines if ln.startswith("step ") and ": loss " in ln]
    assert loss_steps == [2, 4, 6, 8, 10, 12]
    assert sum("evaluating" in ln for ln in lines) == 2
    first_eval = next(i for i, ln in enumerate(lines) if "val loss" in ln)
    assert any(": loss " in ln for ln in lines[first_eval:]) and any(": loss " in ln for ln in lines[:first_eval])
    assert all("lr " in ln and "tokens/s" in ln for ln in lines if ": loss " in ln)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_field_and_the_presets(flag, capsys):
    import config
    assert train.main([flag]) == 0
    out = capsys.readouterr().out
    for name in sorted(config.MODEL_FIELDS | config.TRAIN_FIELDS):
        assert f"--{name} (" in out, name
    for preset in config.PRESETS:
        assert f"  {preset} " in out, preset
    assert "--resume" in out and "--overwrite" in out


def test_help_for_one_field(capsys):
    assert train.main(["--help=log_interval"]) == 0
    out = capsys.readouterr().out
    assert "--log_interval (int, default 10)" in out and "--eval_interval" not in out
    assert train.main(["--help=log_intervall"]) == 2
    assert "log_interval" in capsys.readouterr().err


def test_old_name_eval_samples_still_loads(tmp_path):
    """Runs saved before eval_samples became eval_batches keep loading."""
    from config import ModelConfig, TrainConfig
    old = TrainConfig().to_dict()
    old["eval_samples"] = 7
    del old["eval_batches"]
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    (tmp_path / "model_config.json").write_text(json.dumps(ModelConfig().to_dict()))
    assert runs.load_configs(tmp_path)[1].eval_batches == 7
    from machinery.cli import build_configs
    assert build_configs({"eval_samples": "3"})[1].eval_batches == 3
