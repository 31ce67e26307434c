"""Slurm, for real: a one-node cluster (munged, slurmctld, slurmd from Debian's packages; tests/slurm_cluster.py)
runs the shipped sbatch scripts on the CPU. A 2-process DDP job (gloo) signalled like a time limit (USR1), requeued
(`scontrol requeue`), cancelled and resubmitted by hand logs exactly what an uninterrupted run logs, and the
multi-node script's two torchrun agents meeting through c10d follow the 1-process run; a sweep submitted as a job
array twice trains each run once and names its failed run's log; bad input is one line. Skipped with the reason
where Slurm is not installed or not root, unless TEMPLATEGPT_REQUIRE_SLURM=1 (CI) makes that a failure. The c10d
rendezvous of two agents on 127.0.0.1 is also tested without Slurm."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sweep
from tests.conftest import SAMPLE_DATA
from tests.helpers import deterministic, read_log
from tests.slurm_cluster import SlurmCluster, why_unavailable

ROOT = Path(__file__).resolve().parents[1]
HOOK = Path(__file__).resolve().parent / "slurm_hook"
STEPS = 24
# what every test job overrides in the shipped scripts: no GPUs, CPUs and a time limit the test node allows
CPU_JOB = ["--time=10", "--gpus-per-node=0", "--cpus-per-task=1"]


def settings(cache: Path, name: str, **extra) -> list[str]:
    base = dict(dim=32, num_layers=1, num_q_heads=2, num_kv_heads=2, max_seq_len=32, vocab_len=512,
                dataset=str(SAMPLE_DATA / "tinystories"), cache_dir=str(cache), max_iters=STEPS, eval_interval=4,
                eval_batches=2, checkpoint_interval=8, warmup_iters=2, device="cpu", dtype="float32",
                micro_batch_size=4, model_name=name)
    base.update(extra)
    return [f"--{k}={v}" for k, v in base.items()]


def assert_same_curve(rows_a, rows_b, tol=1e-4):
    """Two processes with half the batch each follow the one-process run (same global batch, same data)."""
    assert [(a["step"], a["tokens"]) for a in rows_a] == [(b["step"], b["tokens"]) for b in rows_b]
    for a, b in zip(rows_a, rows_b):
        for column in ("train_loss", "val_loss", "grad_norm"):
            assert float(a[column]) == pytest.approx(float(b[column]), abs=tol), (a["step"], column)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture(scope="module")
def single_run(cache, tmp_path_factory) -> list[dict]:
    """The 1-process reference: micro_batch_size 8 = 2 processes x 4."""
    trained = tmp_path_factory.mktemp("single") / "trained"
    env = dict(os.environ, TEMPLATEGPT_TRAINED_DIR=str(trained), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "train.py", *settings(cache, "single", micro_batch_size=8)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_log(trained / "single")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_agents_meet_through_c10d_and_follow_one_process(single_run, cache, tmp_path):
    """What train_multinode.sbatch starts on each node, here twice on one machine: --nnodes=2, one process each."""
    env = dict(os.environ, TEMPLATEGPT_TRAINED_DIR=str(tmp_path / "trained"), OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{_free_port()}", "--rdzv_id=test", "--max_restarts=0"]
    agents = [subprocess.Popen([*launcher, "train.py", *settings(cache, "nodes")], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(outputs)[-4000:]
    assert sum("2 process(es)" in out for out in outputs) == 1  # rank 0 alone reports, on whichever agent
    assert_same_curve(read_log(tmp_path / "trained" / "nodes"), single_run)


# --- the cluster ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = why_unavailable()
    if reason:
        if os.environ.get("TEMPLATEGPT_REQUIRE_SLURM") == "1":
            pytest.fail(f"TEMPLATEGPT_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=4) as running:
        yield running


def job_env(cluster: SlurmCluster, trained: Path, **extra) -> dict:
    return {**cluster.env, "TEMPLATEGPT_TRAINED_DIR": str(trained), **extra}


@pytest.fixture(scope="module")
def multinode_job(cluster, cache, tmp_path_factory):
    """train_multinode.sbatch with its two agents on the one node (--ntasks-per-node=2), submitted at once so it
    runs while the next test drives its job; (job id, its log file, its run folder)."""
    folder = tmp_path_factory.mktemp("multinode")
    out = folder / "job.out"
    job = cluster.submit([*CPU_JOB, "--nodes=1", "--ntasks-per-node=2", f"--output={out}",
                          "launch/slurm/train_multinode.sbatch", *settings(cache, "multi")],
                         env=job_env(cluster, folder / "trained"), cwd=ROOT)
    return job, out, folder / "trained" / "multi"


def wait_paused(marks: Path, step: int, out: Path, ranks: int = 2, timeout: float = 240) -> None:
    """Until every training process stands before `step` (tests/slurm_hook/sitecustomize.py)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all((marks / f"paused_{step}_rank{r}").exists() for r in range(ranks)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the job did not reach step {step}:\n{out.read_text(errors='replace')[-4000:]}")


def test_one_node_job_survives_time_limit_requeue_cancel_and_resubmission(cluster, multinode_job, single_run, cache,
                                                                          tmp_path):
    """train_1node.sbatch with 2 processes, stopped three ways and resubmitted by hand: every stop keeps the
    step it was at (a checkpoint on the signal), every start continues from there, and the log is the one an
    uninterrupted 2-process job writes, which follows the 1-process run."""
    marks, out, trained = tmp_path / "marks", tmp_path / "job.out", tmp_path / "trained"
    marks.mkdir()
    env = job_env(cluster, trained, NPROC_PER_NODE="2", TEMPLATEGPT_TEST_PAUSE=f"6+13+18:{marks}",
                  PYTHONPATH=os.pathsep.join([str(HOOK), str(ROOT)]))
    argv = [*CPU_JOB, "--cpus-per-task=2", f"--output={out}", "launch/slurm/train_1node.sbatch",
            *settings(cache, "job")]
    job = cluster.submit(argv, env=env, cwd=ROOT)
    wait_paused(marks, 6, out)
    cluster.run(["scancel", "--batch", "--signal=USR1", job])  # what --signal=B:USR1@120 sends before the time limit
    wait_paused(marks, 13, out)  # the job requeued itself and its second start resumed
    cluster.run(["scontrol", "requeue", job])  # as an administrator or a preemption would
    wait_paused(marks, 18, out)
    cluster.run(["scancel", job])  # cancelled: it stays down ...
    assert cluster.wait(job) == "CANCELLED"
    resubmitted = cluster.submit(argv, env=env, cwd=ROOT)  # ... until the same command is submitted again
    assert cluster.wait(resubmitted) == "COMPLETED", out.read_text()[-4000:]

    text = out.read_text()
    expected = ["stopped by SIGUSR1 at step 7", f"requeueing job {job}", "resuming job from step 7",
                "stopped by SIGTERM at step 14", "stopped by Slurm (TERM", "resuming job from step 14",
                "stopped by SIGTERM at step 19", "resuming job from step 19", "done:"]
    positions = [text.find(line) for line in expected]
    assert -1 not in positions and positions == sorted(positions), (dict(zip(expected, positions)), text[-6000:])
    assert text.count("=== job") == 4  # four starts: the first, two requeues, the resubmission

    multi, multi_out, multi_run = multinode_job
    assert cluster.wait(multi) == "COMPLETED", multi_out.read_text()[-4000:]
    assert "2 process(es)" in multi_out.read_text()
    assert deterministic(read_log(trained / "job")) == deterministic(read_log(multi_run))  # exactly
    assert_same_curve(read_log(multi_run), single_run)


def test_training_that_fails_is_not_requeued_and_says_why(cluster, cache, tmp_path):
    out = tmp_path / "job.out"
    job = cluster.submit([*CPU_JOB, f"--output={out}", "launch/slurm/train_1node.sbatch",
                          *settings(cache, "bad", lr_max=-1)], env=job_env(cluster, tmp_path / "trained"), cwd=ROOT)
    assert cluster.wait(job) == "FAILED"
    text = out.read_text()
    assert "error: TrainConfig.lr_max=-1.0 is invalid" in text
    assert f"so job {job} is not requeued" in text and cluster.job_field(job, "Restarts") == "0"


def test_script_submitted_outside_the_clone_says_where_to_submit(cluster, tmp_path):
    out = tmp_path / "job.out"
    job = cluster.submit([*CPU_JOB, f"--output={out}", str(ROOT / "launch/slurm/train_1node.sbatch")],
                         env=job_env(cluster, tmp_path / "trained"), cwd=tmp_path)
    assert cluster.wait(job) == "FAILED"
    assert "error: submit from the templateGPT folder" in out.read_text()


# --- sweeps -------------------------------------------------------------------------------------------------------
def run_sweep(cluster: SlurmCluster, root: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**cluster.env, "TEMPLATEGPT_TRAINED_DIR": str(root / "trained"),
           "TEMPLATEGPT_SWEEPS_DIR": str(root / "sweeps")}
    swept = ("--model_name=", "--dim=", "--max_seq_len=")
    args = [a for a in settings(cache, "x", max_iters=8, checkpoint_interval=4) if not a.startswith(swept)]
    return subprocess.run([sys.executable, "sweep.py", "--name=sl", "--variant=base:dim=32,max_seq_len=32",
                           "--variant=wide:dim=48,max_seq_len=32", "--variant=broken:dim=32,max_seq_len=30000", "--seeds=1", "--bpb_texts=2", *args,
                           "--launcher=slurm", "--parallel=2", "--sbatch_args=--time=10", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_sweep_array_submitted_twice_trains_each_run_once(cluster, cache, tmp_path):
    first = run_sweep(cluster, tmp_path, cache)
    assert first.returncode == 0, first.stderr
    job = json.loads((tmp_path / "sweeps/sl/slurm_jobs.json").read_text())["submissions"][0]["job_id"]
    assert f"submitted job {job}: 3 run(s), at most 2 at once" in first.stdout
    second = run_sweep(cluster, tmp_path, cache, "--wait")  # while the first is queued or running
    assert "nothing to submit: every run is finished or queued" in second.stdout, second.stdout
    assert second.returncode == 1, second.stderr  # the broken variant failed; the others went on
    broken = tmp_path / "sweeps/sl/logs/sl__broken__s0.log"
    assert "failed: sl__broken__s0: error: the validation split" in second.stderr and f"(log: {broken};" in second.stderr
    assert len(json.loads((tmp_path / "sweeps/sl/slurm_jobs.json").read_text())["submissions"]) == 1
    for run in ("sl__base__s0", "sl__wide__s0"):  # trained once, to the end
        assert (tmp_path / f"sweeps/sl/logs/{run}.log").read_text().count("=== sweep: slurm job") == 1
        assert int(read_log(tmp_path / "trained" / run)[-1]["step"]) == 8
    summary = (tmp_path / "sweeps/sl/summary.md").read_text()
    assert "`base` | 1" in summary and "`wide` | 1" in summary and "Not finished (1)" in summary

    report = subprocess.run([sys.executable, "sweep.py", "--name=sl", "--report", "--bpb_texts=2"], cwd=ROOT,
                            env={**cluster.env, "TEMPLATEGPT_TRAINED_DIR": str(tmp_path / "trained"),
                                 "TEMPLATEGPT_SWEEPS_DIR": str(tmp_path / "sweeps")},
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and "failed: sl__broken__s0: error: the validation split" in report.stderr

    # interrupt one run after the fact: back to its step-4 checkpoint, as if its node had died there
    base = tmp_path / "trained" / "sl__base__s0"
    full = deterministic(read_log(base))
    (base / "checkpoints" / "latest.json").write_text(json.dumps({"step": 4, "dir": "step_4"}))
    shutil.rmtree(base / "checkpoints" / "step_8")
    (base / "log_data.csv").write_text("".join((base / "log_data.csv").read_text().splitlines(True)[:2]))
    third = run_sweep(cluster, tmp_path, cache, "--wait")  # submitting again: the interrupted and the failed run
    assert "sweep sl: 3 variant(s) x 1 seed(s) = 3 runs; 1 finished, 1 to resume, 1 to start" in third.stdout
    submissions = json.loads((tmp_path / "sweeps/sl/slurm_jobs.json").read_text())["submissions"]
    assert sorted(submissions[1]["tasks"].values()) == ["sl__base__s0", "sl__broken__s0"]
    assert "resuming sl__base__s0 from step 4" in (tmp_path / "sweeps/sl/logs/sl__base__s0.log").read_text()
    assert deterministic(read_log(base)) == full
    assert (tmp_path / "sweeps/sl/logs/sl__wide__s0.log").read_text().count("=== sweep: slurm job") == 1


@pytest.mark.parametrize("sbatch_args, message", [
    ("--partition=nope", "Slurm refused the sweep's job array: Batch job submission failed: Invalid partition name "
                         "specified; partitions here: debug*"),
    ("--time=999", "Slurm refused the sweep's job array: Batch job submission failed: Requested time limit is "
                   "invalid (missing or exceeds some limit)"),
])
def test_refused_submission_is_one_line_and_records_nothing(sbatch_args, message, cluster, cache, tmp_path):
    result = run_sweep(cluster, tmp_path, cache, f"--sbatch_args={sbatch_args}")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "sweeps/sl/slurm_jobs.json").exists() and not (tmp_path / "trained").exists()


def test_no_sbatch_on_the_path_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("TEMPLATEGPT_SWEEPS_DIR", str(tmp_path / "sweeps"))
    assert sweep.main(["--name=sl", "--grid=qk_norm=false,true", "--launcher=slurm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --launcher=slurm needs Slurm's sbatch, which is not on the PATH") and "\n" == err[-1]
    assert not (tmp_path / "sweeps").exists()
