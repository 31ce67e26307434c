"""Fault injection for starting and resuming runs: each class of fault ends in one clear line and leaves every
good file as it was (resume with nothing to resume, non-finite updates, two processes on one run, an
interrupted start, architecture changes on resume, too little validation data, out of memory at build)."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from machinery.run.checkpoint import latest_checkpoint
from tests.conftest import SAMPLE_DATA
from tests.helpers import tiny_args
from tests.test_train import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict:
    """Every file under folder with its bytes: equal snapshots mean nothing was changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys, *words: str) -> str:
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in last, last
    return last


# --- 1. --resume with nothing to resume from ----------------------------------------------------------
def test_resume_without_checkpoint_refuses_and_changes_nothing(trained_dir, capsys):
    """The shipped runs have no checkpoints: --resume must not retrain them from step 0."""
    # as shipped: the checkpoints/ and eval/ of a local retraining or evaluation are not in a clone
    shutil.copytree(ROOT / "trained" / "llama3_atto", trained_dir / "llama3_atto",
                    ignore=shutil.ignore_patterns("checkpoints", "eval"))
    before = snapshot(trained_dir)
    refused(["--model_name=llama3_atto", "--resume"], capsys, "no complete checkpoint", "changed nothing")
    assert snapshot(trained_dir) == before


def test_resume_after_checkpoints_were_deleted_refuses(finished_run, trained_dir, capsys):
    args = finished_run
    shutil.rmtree(trained_dir / "run" / "checkpoints")
    before = snapshot(trained_dir)
    refused(args + ["--resume"], capsys, "no complete checkpoint")
    assert snapshot(trained_dir) == before


# --- 3. a non-finite gradient with a finite loss -------------------------------------------------------
def test_non_finite_gradient_is_never_applied_nor_saved(sample_data, data_cache, trained_dir, capsys, monkeypatch):
    """From step 5 on one gradient is inf while the loss stays finite (as with --grad_clip=0 and a huge lr):
    the update is skipped, the run stops, every saved number is finite and the message names a good checkpoint."""
    real_build = train.build_model

    def build_with_poisoned_gradient(*args, **kwargs):
        model = real_build(*args, **kwargs)
        calls = {"n": 0}

        def poison(grad):
            calls["n"] += 1
            return grad * math.inf if calls["n"] >= 6 else grad  # (the first backward is the memory probe's)
        model.token_embedding.weight.register_hook(poison)
        return model

    monkeypatch.setattr(train, "build_model", build_with_poisoned_gradient)
    last = refused(tiny_args(sample_data, data_cache, grad_clip=0, max_iters=12, checkpoint_interval=1, eval_interval=1),
                   capsys, "the update was not applied", "was saved while the loss was still falling")
    run = trained_dir / "run"
    good = latest_checkpoint(run)
    assert good is not None and str(good) in last and good.name == "step_4"
    for ckpt in sorted((run / "checkpoints").glob("step_*")) + [run]:
        weights = load_file(str(ckpt / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), ckpt
    state = torch.load(good / "state.pt", weights_only=True)
    for opt in state["optimizers"]:
        for per_param in opt["state"].values():
            assert all(torch.isfinite(t).all() for t in per_param.values() if torch.is_tensor(t))


def test_a_checkpoint_with_non_finite_numbers_is_not_written(tmp_path):
    from machinery.run.checkpoint import non_finite, save_resumable
    from machinery.run.distributed import Dist
    from machinery.run.run_state import RunState
    from machinery.run.setup import Machine, TrainingError

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.state[model.weight]["exp_avg_sq"][0, 0] = math.inf  # finite weights, poisoned optimizer state
    assert non_finite({"a": [torch.ones(2), torch.tensor([1.0, math.nan])]}) == ["a.1"]

    class Batches:
        def state_dict(self):
            return {}
    machine = Machine(torch.device("cpu"), torch.float32, Dist())
    with pytest.raises(TrainingError, match="inf/NaN"):
        save_resumable(tmp_path, RunState(step=3), model, [optimizer], Batches(), machine)
    assert not (tmp_path / "checkpoints").exists()


# --- 4. one process per run folder ---------------------------------------------------------------------
def test_a_live_run_holds_its_folder(sample_data, data_cache, trained_dir, capsys):
    """While one train.py runs, a second start, --overwrite or --resume on the same name is refused; once it is
    killed (-9, so its lock file stays behind) the next --resume takes over."""
    args = tiny_args(sample_data, data_cache, max_iters=100_000, checkpoint_interval=5, eval_interval=50)
    env = dict(os.environ, TEMPLATEGPT_TRAINED_DIR=str(trained_dir), OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        pointer = trained_dir / "run" / "checkpoints" / "latest.json"
        deadline = time.time() + 120
        while not pointer.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended early"
        for extra in ([], ["--overwrite"], ["--resume"]):
            refused(args + extra, capsys, "is in use by pid")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert train.main(args[:-1] + ["--model_name=run", "--resume", "--max_iters=12"]) == 0


# --- 5. the run's description is one unit ------------------------------------------------------------------
def test_interrupted_start_leaves_no_resumable_half_description(sample_data, data_cache, trained_dir, capsys,
                                                                  monkeypatch):
    from machinery.run import runs
    real_write, written = runs.write_json, []

    def killed_after_first_file(path, obj):
        if written:
            raise KeyboardInterrupt  # the process dies between the two files
        written.append(path)
        real_write(path, obj)

    monkeypatch.setattr(runs, "write_json", killed_after_first_file)
    args = tiny_args(sample_data, data_cache, max_iters=4)
    assert train.main(args) == 130
    monkeypatch.setattr(runs, "write_json", real_write)
    refused(args + ["--resume"], capsys, "model_config.json")  # not a run: nothing resumes with default settings


def test_resume_refuses_a_folder_missing_its_train_config(finished_run, trained_dir, capsys):
    args = finished_run
    (trained_dir / "run" / "train_config.json").unlink()
    before = snapshot(trained_dir)
    refused(args + ["--resume"], capsys, "incomplete", "train_config.json missing")
    assert snapshot(trained_dir) == before


# --- 6. resume keeps the architecture ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template_run(data_cache, tmp_path_factory) -> Path:
    trained = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEMPLATEGPT_TRAINED_DIR", str(trained))
        assert train.main(tiny_args(SAMPLE_DATA, data_cache, max_iters=4, checkpoint_interval=4)) == 0
    return trained / "run"


@pytest.fixture
def finished_run(template_run, data_cache, trained_dir) -> list[str]:
    """A finished 4-step run with its checkpoint, in this test's trained/; returns its arguments."""
    shutil.copytree(template_run, trained_dir / "run")
    return tiny_args(SAMPLE_DATA, data_cache, max_iters=4, checkpoint_interval=4)


@pytest.mark.parametrize("change", ["--mlp_nonlinearity=ReLU", "--norm_type=LayerNorm", "--norm_eps=1e-3",
                                    "--theta=500000", "--sliding_window=8", "--logit_softcap=30",
                                    "--dropout_attn=0.1", "--qk_norm=true", "--dim=64"])
def test_resume_refuses_any_architecture_change(change, finished_run, trained_dir, capsys):
    before = snapshot(trained_dir)
    field = change[2:].split("=")[0]
    refused(finished_run + [change, "--resume"], capsys, "cannot change the architecture", field)
    assert snapshot(trained_dir) == before


def test_resume_may_change_training_settings(finished_run, trained_dir):
    assert train.main(finished_run + ["--resume", "--max_iters=6", "--lr_min=1e-4"]) == 0
    saved = json.loads((trained_dir / "run" / "train_config.json").read_text())
    assert saved["max_iters"] == 6 and saved["lr_min"] == 1e-4


@pytest.mark.parametrize("extra, words", [
    (["--config=run"], ["--resume continues a run with its own configs"]),
    (["--optimizer=muon"], ["cannot switch the optimizer", "'adamw'"]),
])
def test_resume_with_config_or_another_optimizer_is_a_clear_error(extra, words, finished_run, trained_dir, capsys):
    before = snapshot(trained_dir)
    refused(finished_run + ["--resume", *extra], capsys, *words)
    assert snapshot(trained_dir) == before


def test_optimizer_state_that_does_not_fit_is_a_clear_error(finished_run, trained_dir, capsys, monkeypatch):
    """Optimizers built differently from the saved ones (here: one more, as after a code change) cannot take
    the checkpoint's state: one line, nothing changed."""
    real_prepare = train.prepare_training

    def one_more_optimizer(model, train_cfg, machine):
        train_model, optimizers = real_prepare(model, train_cfg, machine)
        return train_model, optimizers + [torch.optim.SGD(model.parameters(), lr=0.1)]

    monkeypatch.setattr(train, "prepare_training", one_more_optimizer)
    before = snapshot(trained_dir)
    refused(finished_run + ["--resume", "--max_iters=6"], capsys, "optimizer state does not fit")
    assert snapshot(trained_dir) == before


# --- 10. bad starts are reported before the run folder exists -------------------------------------------------
def test_validation_split_smaller_than_a_window_is_reported_first(tmp_path, trained_dir, capsys):
    text = tmp_path / "small.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)  # 1,800 characters
    args = ["--tokenizer=byte", f"--dataset={text}", "--val_fraction=0.01", "--max_seq_len=64", "--dim=32",
            "--num_layers=1", f"--cache_dir={tmp_path / 'cache'}", "--max_iters=2", "--warmup_iters=0",
            "--model_name=small", "--device=cpu"]
    refused(args, capsys, "validation split", "fewer than one window")
    assert not (trained_dir / "small").exists()


def test_out_of_memory_at_model_build_is_one_line(sample_data, data_cache, trained_dir, capsys, monkeypatch):
    import machinery.run.setup as setup

    def no_memory(cfg):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1024.00 GiB")
    monkeypatch.setattr(setup, "Model", no_memory)
    refused(tiny_args(sample_data, data_cache), capsys, "out of memory building the model", "dim=32")
    assert not (trained_dir / "run").exists()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                   RuntimeError("MPS backend out of memory (MPS allocated: 17.5 GB)")],
                         ids=["cuda", "mps"])
def test_a_micro_batch_that_does_not_fit_is_one_line_before_the_run_folder(error, sample_data, data_cache,
                                                                            trained_dir, capsys, monkeypatch):
    """The probe (machinery/run/memory_probe.py) runs one micro-batch before the folder is made; on a CPU an
    out-of-memory is rare, so it is simulated where the probe runs the model."""
    import contextlib

    import machinery.run.memory_probe as probe

    @contextlib.contextmanager
    def no_memory(device, dtype):
        raise error
        yield
    monkeypatch.setattr(probe, "autocast", no_memory)
    refused(tiny_args(sample_data, data_cache, micro_batch_size=4), capsys, "one micro-batch does not fit in memory",
            "micro_batch_size=4", "--grad_accum_steps", "nothing was written")
    assert not (trained_dir / "run").exists()


def test_wandb_online_without_a_key_is_one_line_and_leaves_no_run(sample_data, data_cache, trained_dir, tmp_path,
                                                                  capsys, monkeypatch):
    pytest.importorskip("wandb", reason="--tracker=wandb needs wandb (requirements-optional.txt)")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no saved login
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_SILENT", "true")
    refused(tiny_args(sample_data, data_cache, tracker="wandb", max_iters=2), capsys,
            "--tracker=wandb could not start with WANDB_MODE=online", "wandb login")
    assert not (trained_dir / "run").exists()


@pytest.mark.parametrize("how", ["unwritable", "a file"])
def test_a_tensorboard_folder_that_cannot_be_written_is_one_line(how, finished_run, trained_dir, capsys,
                                                                monkeypatch):
    """A new run: no folder is left. A resumed one: nothing changes (its train_config.json included)."""
    pytest.importorskip("tensorboard", reason="--tracker=tensorboard needs tensorboard (requirements-optional.txt)")
    import torch.utils.tensorboard

    def permission_denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    if how == "unwritable":  # (the tests run as root, whom chmod does not stop)
        monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", permission_denied)
        refused(finished_run[:-1] + ["--model_name=new", "--tracker=tensorboard"], capsys,
                "--tracker=tensorboard cannot write to", "Permission denied")
        assert not (trained_dir / "new").exists()
        words = ["Permission denied"]
    else:
        (trained_dir / "run" / "tensorboard").write_text("not a folder")
        words = ["tensorboard is not a regular folder"]
    before = snapshot(trained_dir)
    refused(finished_run + ["--resume", "--max_iters=6", "--tracker=tensorboard"], capsys, *words)
    assert snapshot(trained_dir) == before


# --- 11. after divergence, the advice names a checkpoint that does not diverge again ------------------------
def test_divergence_advice_names_the_checkpoint_before_the_rise_and_following_it_works(sample_data, data_cache,
                                                                                       trained_dir, capsys,
                                                                                       tmp_path):
    """lr 1e6: the loss jumps at step 2 (its checkpoint is written) and is NaN at step 3. --resume alone would go
    back to step_2, already on the way up; the advice names step_1 and says to move step_2 away. Done that, a
    lower lr continues from step_1."""
    args = tiny_args(sample_data, data_cache, lr_max=1e6, lr_min=1e5, grad_clip=0, max_iters=40,
                     checkpoint_interval=1, eval_interval=1)
    last = refused(args, capsys, "the run stopped")
    run = trained_dir / "run"
    assert latest_checkpoint(run).name == "step_2"
    assert f"is {run / 'checkpoints' / 'step_1'}: move step_2 out of {run / 'checkpoints'}" in last, last
    (run / "checkpoints" / "step_2").rename(tmp_path / "step_2")
    code = train.main(args + ["--resume", "--lr_max=3e-3", "--lr_min=3e-4", "--grad_clip=1", "--max_iters=4"])
    assert code == 0, capsys.readouterr().err
    assert "resuming run from step 1" in capsys.readouterr().out


def test_divergence_advice_says_when_no_checkpoint_is_good(tmp_path):
    from machinery.run.checkpoint import save_checkpoint
    from machinery.run.divergence import recovery_advice
    for step in (2, 4):
        save_checkpoint(tmp_path, step, torch.nn.Linear(2, 2), {"step": step})
    (tmp_path / "log_data.csv").write_text("step,val_loss\n1,5.0\n2,6.0\n3,7.0\n4,nan\n")
    assert recovery_advice(tmp_path).startswith("No checkpoint was saved while the loss was still finite and falling "
                                                "(step_4, step_2 came after the loss stopped falling): start again "
                                                "with --overwrite")
    (tmp_path / "log_data.csv").write_text("step,val_loss\n1,5.0\n2,4.0\n3,7.0\n4,nan\n")
    assert f"is {tmp_path / 'checkpoints' / 'step_2'}: move step_4 out" in recovery_advice(tmp_path)
