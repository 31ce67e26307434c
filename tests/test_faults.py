"""Faults replayed against train.py, the run folders, checkpoints and token caches: every class ends either in a
run that continues from good data or in one line and exit code 2, with nothing good lost.

One tiny run (8 steps, checkpoints at 4 and 8) is trained once per module; each test damages a copy of it.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

import tools
import train
from config import ModelConfig, TrainConfig
from machinery import fileio
from machinery.data.pretokenize import load_tokens
from machinery.data.tokenizer import get_tokenizer
from machinery.run import runs, weights
from machinery.run.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from machinery.run.runs import RunLock, RunLockedError
from machinery.run.weights import load_weights

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def settings(data: Path, cache: Path, **extra) -> list[str]:
    """A ~30k-parameter model on the TinyStories sample: about a second per 8 steps."""
    values = dict(dim=32, num_layers=1, num_q_heads=2, num_kv_heads=2, max_seq_len=16, tokenizer="bpe_tinyStories",
                  vocab_len=512, dataset=str(data), cache_dir=str(cache), micro_batch_size=2, max_iters=8,
                  eval_interval=4, eval_samples=1, checkpoint_interval=4, warmup_iters=1, dtype="float32",
                  device="cpu", model_name="run")
    values.update(extra)
    return [f"--{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def base(tmp_path_factory, sample_data_module):
    """A finished run with checkpoints step_4 and step_8, and a warm token cache."""
    root = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEMPLATEGPT_TRAINED_DIR", str(root / "trained"))
        assert train.main(settings(sample_data_module, root / "cache")) == 0
    return root


@pytest.fixture(scope="module")
def sample_data_module():
    return ROOT / "data" / "samples" / "tinystories"


@pytest.fixture
def env(base, tmp_path, monkeypatch, sample_data_module):
    """A copy of the base run in a fresh trained/ folder; returns (trained dir, args builder)."""
    trained = tmp_path / "trained"
    shutil.copytree(base / "trained", trained)
    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(trained))
    monkeypatch.setattr(tools, "TRAINED_DIR", trained)
    return trained, lambda **extra: settings(sample_data_module, base / "cache", **extra)


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def no_temp_files(*folders: Path) -> None:
    left = [p for folder in folders for p in folder.rglob("*.tmp")] + \
           [p for folder in folders for p in folder.rglob(".tmp_*")]
    assert not left, left


# --- 2. resume takes the newest complete checkpoint, whatever latest.json says ----------------------------
POINTER_DAMAGE = {
    "missing": None,
    "corrupt": '{"step": 8, "dir": "st',
    "dangling": json.dumps({"step": 99, "dir": "step_99"}),
    "outside": json.dumps({"step": 8, "dir": "../../../elsewhere"}),
}


@pytest.mark.parametrize("damage", list(POINTER_DAMAGE))
def test_damaged_latest_json_still_resumes_from_newest_checkpoint(env, damage):
    trained, _ = env
    pointer = trained / "run" / "checkpoints" / "latest.json"
    pointer.unlink() if POINTER_DAMAGE[damage] is None else pointer.write_text(POINTER_DAMAGE[damage])
    with pytest.warns(UserWarning, match="ignoring") if damage in ("corrupt", "outside") else nullcontext():
        assert latest_checkpoint(trained / "run").name == "step_8"


@pytest.mark.parametrize("lost", ["state.pt", "model.safetensors"])
def test_step_folder_missing_a_file_falls_back_and_is_not_pruned_away(env, lost, capsys):
    trained, args = env
    ckpts = trained / "run" / "checkpoints"
    (ckpts / "step_8" / lost).unlink()
    (ckpts / "latest.json").unlink()
    with pytest.warns(UserWarning, match="step_8"):
        assert latest_checkpoint(trained / "run").name == "step_4"
    with pytest.warns(UserWarning):
        assert train.main(args(max_iters=12) + ["--resume"]) == 0
    assert "resuming run from step 4" in capsys.readouterr().out
    # step_4 was superseded by complete step_8 and step_12 only once both existed
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_12", "step_8"]
    assert latest_checkpoint(trained / "run").name == "step_12"


def test_pruning_keeps_checkpoints_not_superseded_by_complete_ones(tmp_path):
    model = torch.nn.Linear(3, 2)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, {"step": step})
    (tmp_path / "checkpoints" / "step_2" / "state.pt").unlink()  # step_2 is now incomplete
    save_checkpoint(tmp_path, 3, model, {"step": 3})
    # complete: step_3 and step_1; nothing complete is older than them, so nothing is pruned
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_1", "step_2", "step_3"]
    save_checkpoint(tmp_path, 4, model, {"step": 4})
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_3", "step_4"]


# --- 4. one training process per run -------------------------------------------------------------------
HOLDER = ("import sys, time; from machinery.run.runs import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
          "print('locked', flush=True); time.sleep(120)")


def test_a_run_is_locked_while_alive_and_taken_over_after_kill_9(env, capsys):
    trained, args = env
    run_dir = trained / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunLock(run_dir).acquire()
        for extra in (["--resume"], ["--overwrite"]):
            assert train.main(args(max_iters=12) + extra) == 2
            one_line_error(capsys, f"pid {holder.pid}")
        assert latest_checkpoint(run_dir).name == "step_8"  # untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (trained / ".run.lock").exists()  # left behind by the killed process...
    (run_dir / ".model.safetensors.x1y2.tmp").write_bytes(b"half")  # ...with a write it never finished
    with RunLock(run_dir) as lock:  # ...and taken over
        assert f"pid {os.getpid()}" in lock.path.read_text()
        no_temp_files(run_dir)
    assert not (trained / ".run.lock").exists()


# --- 5. a run's description is complete or absent ------------------------------------------------------
def test_kill_while_describing_a_run_leaves_no_half_run(tmp_path, monkeypatch):
    real = fileio.write_json

    def die_after_first(path, obj):
        real(path, obj)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "write_json", die_after_first)
    cfgs = ModelConfig(vocab_len=10), TrainConfig()
    with pytest.raises(KeyboardInterrupt):
        runs.write_description(tmp_path / "new", *cfgs)
    assert runs.list_runs(tmp_path) == []  # not a run: model_config.json is written last


def test_incomplete_description_is_refused(env, capsys):
    trained, args = env
    (trained / "run" / "train_config.json").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        runs.load_configs(trained / "run")
    assert train.main(args(max_iters=12) + ["--resume"]) == 2
    one_line_error(capsys, "train_config.json missing")
    assert latest_checkpoint(trained / "run").name == "step_8"


# --- 7. corruption is detected ---------------------------------------------------------------------------
def scribble(path: Path, offset_from_end: int = 64) -> None:
    """Overwrite bytes near the end of a file with other bytes, keeping its size."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) - offset_from_end, len(data) - offset_from_end + 16):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_corrupt_weights_are_refused_naming_the_file(env):
    trained, _ = env
    weights = trained / "run" / "model.safetensors"
    model, *_ = tools.load_model("run")
    scribble(weights)
    with pytest.raises(ValueError, match=f"{weights}.*corrupt"):
        load_weights(model, weights)
    with pytest.raises(ValueError, match="corrupt"):
        tools.load_model("run")


def test_weights_without_a_checksum_still_load(tmp_path):
    """Files written before checksums (the shipped trained/ runs) load as before."""
    from safetensors.torch import save_file
    model = torch.nn.Linear(4, 3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "old.safetensors")
    load_weights(model, tmp_path / "old.safetensors")
    for name in tools.list_runs(ROOT / "trained"):
        shipped = ROOT / "trained" / name
        model, *_ = tools.load_model(shipped)


def test_corrupt_checkpoint_contents_are_one_line(env, capsys):
    trained, args = env
    scribble(trained / "run" / "checkpoints" / "step_8" / "state.pt")
    assert train.main(args(max_iters=12) + ["--resume"]) == 2
    one_line_error(capsys, "step_8", "corrupt", "step_4")  # names the damaged file and the good one to use
    assert (trained / "run" / "checkpoints" / "step_4" / "state.pt").is_file()


def test_foreign_state_in_an_old_checkpoint_is_one_line(env, capsys):
    """A checkpoint from before checksums, whose state.pt unpickles to something else."""
    trained, args = env
    step = trained / "run" / "checkpoints" / "step_8"
    (step / "checksums.json").unlink()
    torch.save([1, 2, 3], step / "state.pt")
    with pytest.raises(ValueError, match="corrupt or not a checkpoint"):
        load_checkpoint(step, tools.load_model("run")[0])
    assert train.main(args(max_iters=12) + ["--resume"]) == 2
    one_line_error(capsys, "state.pt", "corrupt")


def test_corrupt_token_cache_is_rebuilt_with_a_warning(tmp_path, sample_data_module):
    cfg = TrainConfig(dataset=str(sample_data_module), cache_dir=str(tmp_path))
    tok = get_tokenizer("bpe_tinyStories", 512)
    clean = np.array(load_tokens(cfg, tok, "validation", show_progress=False))
    cache = next(tmp_path.glob("*/tokens.bin"))
    noise = np.random.default_rng(0).integers(0, 512, clean.size).astype(clean.dtype)  # in-vocabulary noise
    cache.write_bytes(noise.tobytes())
    with pytest.warns(UserWarning, match="damaged.*rebuilding"):
        again = np.array(load_tokens(cfg, tok, "validation", show_progress=False))
    np.testing.assert_array_equal(again, clean)


# --- 8. degenerate values are refused up front, naming the field ----------------------------------------
@pytest.mark.parametrize("arg, field", [
    ("--mlp_hidden_mult=1e-9", "mlp_hidden_mult"),
    ("--mlp_hidden_mult=1e9", "mlp_hidden_mult"),
    ("--mlp_multiple_of=100000000", "mlp_multiple_of"),
    ("--num_restarts=2000", "num_restarts"),
    ("--T_mult=1e300", "T_mult"),
    (f"--seed={2**64}", "seed"),
    ("--cache_dir=", "cache_dir"),
    ("--doc_separator=", "doc_separator"),
])
def test_degenerate_values_are_refused_naming_the_field(env, arg, field, capsys):
    trained, args = env
    assert train.main(args(model_name="fresh", num_restarts=2) + [arg]) == 2
    one_line_error(capsys, field)
    assert not (trained / "fresh").exists()


# --- 9. paths never leave their folder; names can be loaded back ------------------------------------------
@pytest.mark.parametrize("name", ["~root", "a\\b", "x" * 300, "-flag", ".hidden", "a b", "sub/dir"])
def test_names_that_cannot_be_loaded_back_are_refused(env, name, capsys):
    trained, args = env
    assert train.main(args(model_name=name)) == 2
    one_line_error(capsys, "model_name")
    assert sorted(p.name for p in trained.iterdir()) == ["run"]


def test_a_link_inside_trained_is_not_followed(env, tmp_path, capsys):
    trained, args = env
    outside = tmp_path / "outside"
    shutil.copytree(trained / "run", outside)
    (trained / "link").symlink_to(outside)
    before = sorted(p.name for p in outside.rglob("*"))
    for action in (lambda: tools.load_model("link"), lambda: runs.resolve_run(trained / "link")):
        with pytest.raises(ValueError, match="symbolic link"):
            action()
    assert train.main(args(model_name="link", max_iters=12) + ["--resume"]) == 2
    one_line_error(capsys, "symbolic link")
    assert sorted(p.name for p in outside.rglob("*")) == before  # nothing written outside trained/


def test_a_step_folder_linking_elsewhere_is_skipped(env, tmp_path):
    trained, _ = env
    ckpts = trained / "run" / "checkpoints"
    shutil.move(ckpts / "step_8", tmp_path / "step_8")
    (ckpts / "step_8").symlink_to(tmp_path / "step_8")
    with pytest.warns(UserWarning, match="not a real folder"):
        assert latest_checkpoint(trained / "run").name == "step_4"
    outside = sorted(p.name for p in (tmp_path / "step_8").iterdir())
    save_checkpoint(trained / "run", 8, torch.nn.Linear(2, 2), {"step": 8})  # replaces the link, not its target
    assert not (ckpts / "step_8").is_symlink() and sorted(p.name for p in (tmp_path / "step_8").iterdir()) == outside


# --- 10. one line and exit code 2, nothing good lost ------------------------------------------------------
def test_log_with_a_wrong_header_is_one_line(env, capsys):
    trained, args = env
    log = trained / "run" / "log_data.csv"
    log.write_text("when,what\n4,1.0\n")
    assert train.main(args(max_iters=12) + ["--resume"]) == 2
    one_line_error(capsys, "log_data.csv", "header")
    assert log.read_text() == "when,what\n4,1.0\n"


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


FULL_DISK_AT = {  # where the disk fills up: (object, attribute to replace, only when writing this file)
    "weights": (weights, "save_file", None),
    "checkpoint state": (torch, "save", None),
    "run log": (os, "replace", "log_data.csv"),
    "run description": (os, "replace", "model_config.json"),
    "training curves": (os, "replace", "training_curves.png"),
    "best weights": (os, "replace", "/run/model.safetensors"),
}


@pytest.mark.parametrize("where", list(FULL_DISK_AT))
def test_full_disk_is_one_line_and_keeps_the_checkpoints(env, where, monkeypatch, capsys):
    trained, args = env
    owner, attr, only_for = FULL_DISK_AT[where]
    real = getattr(owner, attr)

    def fill_up(*a, **k):
        if only_for is None or any(only_for in str(x) for x in a):
            _enospc()
        return real(*a, **k)

    monkeypatch.setattr(owner, attr, fill_up)
    assert train.main(args(max_iters=12) + ["--resume"]) == 2
    line = one_line_error(capsys, "No space left on device", "MB are free there", "then run again")
    monkeypatch.setattr(owner, attr, real)
    newest = latest_checkpoint(trained / "run")  # step_8, or step_12 when the disk filled up after it
    assert newest.name == ("step_12" if where == "training curves" else "step_8")
    # names the file, and what --resume will do once there is space (true: it does so just below)
    assert f"could not write {trained / 'run'}" in line
    assert line.endswith(f"{newest}; continue with: python train.py --model_name=run --resume"), line
    no_temp_files(trained)
    assert train.main(args(max_iters=12) + ["--resume"]) == 0  # space freed: the run goes on


def test_full_disk_while_tokenizing_is_one_line(tmp_path, sample_data_module, monkeypatch):
    import machinery.data.pretokenize as pretokenize

    def fill_up(self, data):
        with pretokenize.reported_writes(self.path):
            _enospc()

    monkeypatch.setattr(pretokenize._Checksummed, "write", fill_up)
    cfg = TrainConfig(dataset=str(sample_data_module), cache_dir=str(tmp_path))
    with pytest.raises(fileio.WriteError, match="tokens.bin.*No space left"):
        load_tokens(cfg, get_tokenizer("bpe_tinyStories", 512), "validation", show_progress=False)
    no_temp_files(tmp_path)


@pytest.mark.parametrize("kind", ["symlink", "file", "dangling symlink"])
def test_overwrite_or_create_on_a_link_or_file_is_one_line(env, tmp_path, kind, capsys):
    trained, args = env
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    path = trained / "odd"
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "file":
        path.write_text("not a run")
    else:
        path.symlink_to(tmp_path / "nowhere")
    for extra in (["--overwrite"], []):
        assert train.main(args(model_name="odd") + extra) == 2
        one_line_error(capsys, str(path))
    assert (victim / "keep.txt").read_text() == "mine" and (path.is_symlink() or path.is_file())


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_broken_data_file_names_the_file_and_line(tmp_path, kind, capsys, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    if kind == "jsonl":
        (data / "train.jsonl").write_text('{"text": "one"}\n{"text": "two"\n{"text": "three"}\n')
        needle = "train.jsonl, line 2"
    else:
        (data / "train.parquet").write_bytes(b"PAR1 this is not really parquet")
        needle = "train.parquet is not a readable parquet file"
    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(tmp_path / "trained"))
    assert train.main(settings(data, tmp_path / "cache")) == 2
    one_line_error(capsys, needle)


def test_stale_temp_files_are_gone_after_the_next_run(env, base):
    trained, args = env
    run = trained / "run"
    (run / ".log_data.csv.abc123.tmp").write_text("half")
    (run / "checkpoints" / ".tmp_abcd").mkdir()  # an older version's checkpoint temp folder
    (run / "checkpoints" / ".k2j3.tmp").mkdir()
    cache = next((base / "cache").iterdir())
    (cache / "tokens.bin.999.tmp").write_bytes(b"x")  # an older version's token temp file
    (cache / ".tokens.bin.x8.tmp").write_bytes(b"x")
    assert train.main(args(max_iters=12) + ["--resume"]) == 0
    no_temp_files(trained, base / "cache")


# --- 11. a run's files are its own: links and odd files inside a run folder are refused by every reader -----
RUN_ENTRIES = ["model_config.json", "train_config.json", "model.safetensors", "log_data.csv", "checkpoints",
               "tensorboard"]


def _readers(trained: Path, args, out: Path) -> dict:
    import export_hf
    import inference
    import model_comparison
    return {
        "tools.load_model": lambda: tools.load_model("run"),
        "inference": lambda: inference.main(["run", "Once"]),
        "comparison": lambda: model_comparison.main(["run", f"--out={out / 'cmp'}", "--val_data=None"]),
        "export": lambda: export_hf.main(["run", str(out / "export")]),
        "train --resume": lambda: train.main(args(max_iters=12) + ["--resume"]),
        "train --config": lambda: train.main([f"--config={trained / 'run'}", "--model_name=child"]),
    }


@pytest.mark.parametrize("entry", RUN_ENTRIES + ["log_data.csv as a FIFO"])
def test_a_link_or_odd_file_inside_a_run_is_refused_by_every_reader(env, tmp_path, entry, capsys):
    trained, args = env
    run = trained / "run"
    outside = tmp_path / "outside"
    outside.mkdir()
    if entry.endswith("FIFO"):
        entry = "log_data.csv"
        (run / entry).unlink()
        os.mkfifo(run / entry)  # reading it would block forever
    else:
        if not (run / entry).exists():
            (run / entry).mkdir()
        shutil.move(run / entry, outside / entry)
        (run / entry).symlink_to(outside / entry)
    before = sorted((str(p), p.lstat().st_size) for p in tmp_path.rglob("*") if not p.is_dir())
    for name, read in _readers(trained, args, tmp_path / "results").items():
        try:
            result = read()
        except ValueError as e:  # the Python API (tools.load_model) raises; the command lines print one line
            assert name == "tools.load_model", name
            message = str(e)
        else:
            assert result == 2, name
            err = capsys.readouterr().err
            assert "Traceback" not in err, err
            message = err.strip().splitlines()[-1]
        assert str(run / entry) in message and ("symbolic link" in message or "not a regular" in message), \
            (name, message)
    after = sorted((str(p), p.lstat().st_size) for p in tmp_path.rglob("*") if not p.is_dir())
    assert after == before and not (tmp_path / "results").exists() and not (trained / "child").exists()
