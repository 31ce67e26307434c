"""Smoke tests of the benchmark scripts: they run a tiny configuration end to end and report valid JSON.
They check behaviour (keys, types, consistency), never speed."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset=nanogpt_shakespeare", "--dim=32", "--num_layers=1", "--num_q_heads=2", "--num_kv_heads=2",
        "--max_seq_len=16", "--micro_batch_size=2", "--eval_batches=2", "--threads=1"]
TRAIN_KEYS = {"preset", "params", "device", "dtype", "compile", "threads", "tokens_per_step", "steps",
              "ms_per_iter", "ms_p10", "ms_p90", "tokens_per_sec", "flops_per_token", "mfu", "peak_flops",
              "peak_memory_mb", "split_ms", "split_frac", "outside_frac", "load_avg", "date"}
PHASES = {"data", "forward", "backward", "optimizer", "other"}


def run_json(script: str, *args: str, timeout: float = 120) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON line in the output:\n{proc.stdout}\n{proc.stderr[-2000:]}"
    return json.loads(lines[-1])


def test_bench_train_runs_two_steps_and_prints_the_expected_json(sample_data, tmp_path):
    row = run_json("bench_train.py", *TINY, "--steps=2", "--warmup=1", f"--cache_dir={tmp_path}")
    assert TRAIN_KEYS <= row.keys(), TRAIN_KEYS - row.keys()
    assert row["steps"] == 2 and row["preset"] == "nanogpt_shakespeare"
    assert row["device"] == "cpu" and row["dtype"] == "float32" and row["compile"] is False
    assert row["threads"] == 1 and row["tokens_per_step"] == 2 * 16
    assert row["params"] > 0 and row["flops_per_token"] > 0 and row["peak_flops"] > 0
    assert 0 < row["ms_p10"] <= row["ms_per_iter"] <= row["ms_p90"]
    assert row["tokens_per_sec"] == pytest.approx(row["tokens_per_step"] / (row["ms_per_iter"] / 1e3), rel=1e-3)
    assert 0 < row["mfu"] and math.isfinite(row["mfu"])
    assert row["peak_memory_mb"] > 0
    assert set(row["split_ms"]) == PHASES and set(row["split_frac"]) == PHASES
    assert sum(row["split_frac"].values()) == pytest.approx(1.0, abs=0.01)
    assert row["outside_frac"] == pytest.approx(row["split_frac"]["data"] + row["split_frac"]["other"], abs=2e-4)
    assert any(p.name == "tokens.bin" for p in tmp_path.rglob("*")), "the data cache went elsewhere"


def _bench_module(name: str):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_bench_times_the_very_step_train_py_runs(sample_data, tmp_path, monkeypatch):
    """Same settings and seed: the benchmark's step losses are the trainer's logged losses, bit for bit."""
    import train
    from tests.helpers import read_log

    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(tmp_path / "trained"))
    settings = dict(dim=32, num_layers=1, num_q_heads=2, num_kv_heads=2, max_seq_len=16, tokenizer="byte",
                    dataset=str(sample_data / "tinyshakespeare" / "input.txt"), val_fraction=0.1,
                    cache_dir=str(tmp_path / "cache"), micro_batch_size=2,
                    grad_accum_steps=2, max_iters=5, eval_interval=1, eval_batches=1, warmup_iters=2, device="cpu",
                    dtype="float32", dropout_resid=0.1)
    runner = _bench_module("bench_train").TrainStep({k: str(v) for k, v in settings.items()}, max_steps=5)
    for _ in range(5):
        runner.step()
    assert train.main([f"--{k}={v}" for k, v in settings.items()] + ["--model_name=same"]) == 0
    logged = [float(row["train_loss"]) for row in read_log(tmp_path / "trained" / "same")]
    assert [float(loss) for loss in runner.losses] == logged


def test_bench_train_rejects_an_unknown_field(tmp_path, capsys):
    bench_train = _bench_module("bench_train")
    assert bench_train.main(["--preset=nanogpt_shakespeare", "--dimm=32", f"--cache_dir={tmp_path}"]) == 2
    assert "dimm" in capsys.readouterr().err


def test_pair_variants_parse():
    bench_train = _bench_module("bench_train")
    assert bench_train._parse_variant("base") == ({}, {}, None)
    assert bench_train._parse_variant("adamw=foreach, threads=1, compile, no_log_io") == (
        {"adamw": "foreach", "no_log_io": True}, {"compile": "true"}, 1)


def test_reference_gpt_runs_a_few_iterations(sample_data):
    row = run_json("reference_gpt.py", "--max_iters=4", "--eval_interval=2", "--eval_iters=2", "--n_layer=1",
                   "--n_embd=32", "--n_head=2", "--block_size=16", "--batch_size=2", "--threads=1", "--quiet")
    assert row["iters"] == 4 and row["vocab"] == 65 and row["params"] > 0
    assert 0 < row["ms_p10"] <= row["ms_per_iter"] <= row["ms_p90"]
    for key in ("train_loss", "val_loss", "val_loss_full"):
        assert 0 < row[key] < 2 * math.log(65), (key, row[key])  # near log(65) ~ 4.17 untrained


def test_profile_train_groups_the_step(sample_data, tmp_path, capsys):
    profile_train = _bench_module("profile_train")
    tiny = [a for a in TINY if not a.startswith("--threads")]  # in-process: leave pytest's threads alone
    assert profile_train.main([*tiny, "--steps=2", "--warmup=1", "--json", f"--cache_dir={tmp_path}"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    groups = row["groups_ms"]
    assert {"matmul", "attention", "optimizer", "python overhead"} <= groups.keys()
    assert all(v >= 0 for v in groups.values())
    assert sum(row["groups_frac"].values()) == pytest.approx(1.0, abs=0.01)
