"""torchrun on CPU (gloo): 2 processes follow the single-process loss curve for the same global batch,
FSDP2 too, and a 2-process run resumes exactly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_DATA
from tests.helpers import deterministic, read_log

ROOT = Path(__file__).resolve().parents[1]


def settings(sample_data: Path, cache: Path, **extra) -> list[str]:
    base = dict(dim=32, num_layers=2, num_q_heads=4, num_kv_heads=2, max_seq_len=32, vocab_len=512,
                dataset=str(sample_data / "tinystories"), cache_dir=str(cache), max_iters=6,
                eval_interval=3, eval_batches=2, checkpoint_interval=3, warmup_iters=2, device="cpu", dtype="float32")
    base.update(extra)
    return [f"--{k}={v}" for k, v in base.items()]


def run(args: list[str], trained: Path, procs: int = 1) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
                if procs > 1 else [sys.executable])
    env = dict(os.environ, TEMPLATEGPT_TRAINED_DIR=str(trained), OMP_NUM_THREADS="1")
    result = subprocess.run([*launcher, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One token cache for the module (tokenizing takes longer than these runs)."""
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture(scope="module")
def single_run(shared_data_module, cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    run(settings(shared_data_module, cache, micro_batch_size=8, model_name="single"), tmp / "trained")
    return read_log(tmp / "trained" / "single")


@pytest.fixture(scope="module")
def shared_data_module():
    return SAMPLE_DATA


def assert_same_curve(rows_a, rows_b, tol=1e-4):
    assert len(rows_a) == len(rows_b)
    for a, b in zip(rows_a, rows_b):
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        for column in ("train_loss", "val_loss", "grad_norm"):
            assert float(a[column]) == pytest.approx(float(b[column]), abs=tol), column


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_follow_single_process_curve(parallel, single_run, shared_data_module, cache, tmp_path):
    out = run(settings(shared_data_module, cache, micro_batch_size=4, model_name="multi", parallel=parallel,
                       activation_checkpointing=parallel == "fsdp"), tmp_path / "trained", procs=2)
    assert "2 process(es)" in out.stdout and out.stdout.count("done:") == 1  # rank 0 alone reports
    assert_same_curve(read_log(tmp_path / "trained" / "multi"), single_run)


def test_two_process_run_resumes_exactly(shared_data_module, cache, tmp_path):
    trained = tmp_path / "trained"
    args = settings(shared_data_module, cache, micro_batch_size=4, model_name="multi", checkpoint_interval=2)
    run(args, trained, procs=2)
    run_dir = trained / "multi"
    full_log = read_log(run_dir)
    # roll the run back to its step-4 checkpoint, as if it had died after writing it: between two evaluations,
    # so each process's share of the interval's training loss must come back (the row at step 6 averages it)
    (run_dir / "checkpoints" / "latest.json").write_text(json.dumps({"step": 4, "dir": "step_4"}))
    shutil.rmtree(run_dir / "checkpoints" / "step_6")
    out = run(args + ["--resume"], trained, procs=2)
    assert "resuming multi from step 4" in out.stdout
    assert deterministic(read_log(run_dir)) == deterministic(full_log)
