"""sweep.py and machinery/sweeps/: variants from --grid and --variant, every bad field refused before any run, a
real sweep killed with kill -9 and completed by re-running it, a failing run reported while the others finish,
a finished sweep re-run without training, Welch's t-test against a hand computation and R, and the report."""
from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sweep
import tools
from machinery.sweeps import runner
from machinery.sweeps.grid import expand, parse_grid, parse_variant
from machinery.sweeps.stats import welch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16
COLUMNS = ["variant", "seeds", "best_val_loss_mean", "best_val_loss_std", "final_val_loss_mean",
           "bits_per_byte_mean", "tokens_per_sec_mean", "diff_vs_baseline", "ci95_low", "ci95_high", "p_value", "test"]


def tiny(cache: Path, **extra) -> list[str]:
    """A ~20k-parameter model on the bundled TinyStories sample: each run takes a second or two of compute."""
    settings = dict(dim=32, num_layers=1, num_q_heads=2, num_kv_heads=2, max_seq_len=32, vocab_len=512,
                    micro_batch_size=4, max_iters=STEPS, eval_interval=2, eval_samples=2, checkpoint_interval=2,
                    warmup_iters=1, device="cpu", dtype="float32", dataset=str(ROOT / "data/samples/tinystories"),
                    cache_dir=str(cache), bpb_texts=4)
    settings.update(extra)
    return [f"--{k}={v}" for k, v in settings.items()]


def _point_dirs(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.setattr(tools, "TRAINED_DIR", root / "trained")
    mp.setenv("TEMPLATEGPT_TRAINED_DIR", str(root / "trained"))
    mp.setenv("TEMPLATEGPT_SWEEPS_DIR", str(root / "sweeps"))


@pytest.fixture
def no_training(monkeypatch):
    """Any attempt to start train.py fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a run was started: {args[0]}")
    monkeypatch.setattr(runner.subprocess, "Popen", refuse)


# --- variants -------------------------------------------------------------------------------------------
def test_grid_is_a_cross_product_with_the_first_values_as_baseline():
    grids = [parse_grid("qk_norm=false,true"), parse_grid("lr_max=1e-3,3e-3")]
    variants = expand(grids, [])
    assert [v.name for v in variants] == ["baseline", "lr_max-3e-3", "qk_norm-true", "qk_norm-true_lr_max-3e-3"]
    assert variants[0].settings == {"qk_norm": "false", "lr_max": "1e-3"}
    assert variants[3].settings == {"qk_norm": "true", "lr_max": "3e-3"}


def test_list_form_changes_several_fields_and_combines_with_a_grid():
    named = [parse_variant("swiglu:"), parse_variant("gelu:mlp_nonlinearity=GeLU, mlp_gated=false")]
    assert named[1] == ("gelu", {"mlp_nonlinearity": "GeLU", "mlp_gated": "false"})
    variants = expand([parse_grid("lr_max=1e-3,3e-3")], named)
    assert [v.name for v in variants] == ["swiglu", "swiglu_lr_max-3e-3", "gelu", "gelu_lr_max-3e-3"]
    assert variants[3].settings == {"mlp_nonlinearity": "GeLU", "mlp_gated": "false", "lr_max": "3e-3"}


@pytest.mark.parametrize("argv, message", [
    (["--grid=qk_nrom=false,true"], "unknown config field 'qk_nrom'. Did you mean: qk_norm"),
    (["--variant=a:", "--variant=b:mlp_nonlinarity=SiLU"], "Did you mean: mlp_nonlinearity"),
    (["--grid=qk_norm=false,maybe"], "--qk_norm='maybe' is not a valid bool"),
    (["--grid=head_dim=16,15"], "head_dim=15 is invalid: RoPE rotates pairs"),
    (["--grid=seed=1,2"], "seeds are given with --seeds"),
    (["--grid=qk_norm=false,true", "--qk_norm=true"], "fixed and also swept"),
    (["--grid=qk_norm=false,true", "--grid=qk_norm=true"], "more than one --grid"),
    (["--grid=qk_norm"], "--grid=FIELD=VALUE1,VALUE2"),
    (["--variant=a:", "--variant=a:qk_norm=true"], "used twice"),
    (["--variant=a b:qk_norm=true"], "NAME:FIELD=VALUE"),
    (["--grid=qk_norm=true", "--preset=nope"], "presets are"),
    (["--grid=qk_norm=true", "--seeds=x"], "--seeds='x' is invalid"),
    (["--grid=qk_norm=true", "--parallel=0"], "--parallel=0 is invalid"),
    (["--name=a/b", "--grid=qk_norm=true"], "--name='a/b' is invalid"),
    (["--grid=qk_norm=true", "--seeds=-1"], "--seeds=-1 is invalid: a count of seeds must be 1..100"),
    (["--grid=qk_norm=true", "--seeds=100000000"], "a count of seeds must be 1..100"),
    (["--grid=qk_norm=true", f"--seeds={','.join(map(str, range(101)))}"], "at most 100"),
    ([f"--grid=lr_max={','.join(f'{i}e-4' for i in range(1, 11))}", "--grid=dim=32,64,96,128",
      "--grid=num_layers=1,2,3,4,5,6,7,8,9,10", "--seeds=3"], "would train 1,200 runs"),
    ([f"--grid={f}={','.join(str(v) for v in range(2, 12))}" for f in
      ("num_layers", "dim", "max_seq_len", "micro_batch_size", "max_iters", "eval_interval", "warmup_iters",
       "checkpoint_interval", "log_interval", "eval_batches")], "would train 30,000,000,000 runs"),
])
def test_bad_input_fails_before_any_run(argv, message, tmp_path, monkeypatch, capsys, no_training):
    _point_dirs(monkeypatch, tmp_path)
    argv = argv if any(a.startswith("--name") for a in argv) else ["--name=bad", *argv]
    assert sweep.main(argv + tiny(tmp_path / "cache")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "trained").exists()


def test_parallel_slots_split_cores_or_give_one_gpu_each(monkeypatch):
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert runner.slots(2, "cpu", None) == [{"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}] * 2
    assert runner.slots(3, "cpu", 1)[2] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    monkeypatch.setattr(runner, "_visible_gpus", lambda: ["2", "5"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in runner.slots(3, "auto", None)] == ["2", "5", "2"]
    assert "CUDA_VISIBLE_DEVICES" not in runner.slots(2, "cpu", None)[0]  # --device=cpu keeps off the GPUs


def test_run_folder_decides_skip_restart_or_start(tmp_path, monkeypatch):
    from machinery.sweeps.definition import Sweep
    _point_dirs(monkeypatch, tmp_path)
    grid = [parse_grid("qk_norm=false,true")]
    plan = Sweep("s", "llama3_atto", {"max_iters": "4", "warmup_iters": "1"}, grid, [], [0]).runs[1]
    assert plan.name == "s__qk_norm-true__s0" and plan.expected["qk_norm"] is True and plan.max_iters == 4
    command = runner.train_command(plan, "new", "llama3_atto")
    assert command[2:] == ["--preset=llama3_atto", "--max_iters=4", "--warmup_iters=1", "--qk_norm=true", "--seed=0",
                           f"--model_name={plan.name}"]
    assert runner.train_command(plan, "restart", "llama3_atto")[-1] == "--overwrite"
    assert runner.train_command(plan, "resume", "llama3_atto")[2:] == [f"--model_name={plan.name}", "--resume"]
    run_dir = tmp_path / "trained" / plan.name
    assert runner.run_state(plan) == "new"
    run_dir.mkdir(parents=True)
    (run_dir / "log_data.csv").write_text("step,val_loss\n2,5.0\n")
    assert runner.run_state(plan) == "restart"  # no checkpoint: train.py --overwrite
    (run_dir / "log_data.csv").write_text("step,val_loss\n2,5.0\n4,4.0\n")
    (run_dir / "model.safetensors").write_bytes(b"")
    assert runner.run_state(plan) == "done"


# --- Welch's t-test ---------------------------------------------------------------------------------------
def _t_sf_by_integration(t: float, df: float, steps: int = 20_000) -> float:
    """P(T > t) for Student's t, integrating its density with Simpson's rule (independent of scipy)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    density = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / steps
    area = density(0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 - area * h / 3


def test_welch_p_value_matches_a_hand_computation():
    baseline, variant = [2.10, 2.14, 2.12], [2.05, 2.09, 2.04]   # best val loss of 3 seeds each
    # means 2.12 and 2.06; sample variances (squared deviations / (n - 1)):
    var_a = (0.02 ** 2 + 0.02 ** 2 + 0.0) / 2                      # 0.0004
    var_b = (0.01 ** 2 + 0.03 ** 2 + 0.02 ** 2) / 2                # 0.0007
    se2 = var_a / 3 + var_b / 3                                    # 0.000366...
    t = (2.06 - 2.12) / math.sqrt(se2)                             # -3.1334
    df = se2 ** 2 / ((var_a / 3) ** 2 / 2 + (var_b / 3) ** 2 / 2)  # Welch-Satterthwaite: 484/130 = 3.7231
    assert t == pytest.approx(-3.1334, abs=1e-4) and df == pytest.approx(484 / 130)
    result = welch(baseline, variant)
    assert result.diff == pytest.approx(-0.06) and result.t == pytest.approx(t) and result.df == pytest.approx(df)
    assert result.p_value == pytest.approx(2 * _t_sf_by_integration(abs(t), df), rel=1e-6)
    assert result.p_value == pytest.approx(0.03869, abs=5e-6)


def test_welch_matches_r_on_the_sleep_data():
    # R: t.test(extra ~ group, data = sleep) -> t = -1.8608, df = 17.776, p-value = 0.07939,
    # 95 percent confidence interval: -3.3654832 0.2054832 (group 1 - group 2)
    group1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    group2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    r = welch(group2, group1)  # welch(a, b) tests b - a
    assert (round(r.t, 4), round(r.df, 3), round(r.p_value, 5)) == (-1.8608, 17.776, 0.07939)
    assert (round(r.ci_low, 7), round(r.ci_high, 7)) == (-3.3654832, 0.2054832)
    assert math.isnan(welch([1.0], [2.0, 3.0]).p_value)  # one seed: no test


# --- a real sweep: killed with kill -9, completed by re-running it --------------------------------------------
def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory):
    """'t': base and qk_norm x 2 seeds plus a variant whose tokenizer does not exist, 2 runs at a time. The
    sweep is killed with kill -9 once a run has a checkpoint, then the same command is run again."""
    root = tmp_path_factory.mktemp("sweep")
    args = ["--name=t", "--variant=base:", "--variant=qk:qk_norm=true", "--variant=broken:tokenizer=nope",
            "--seeds=2", "--parallel=2", *tiny(root / "cache")]
    with pytest.MonkeyPatch.context() as mp:
        _point_dirs(mp, root)
        first = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *args], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None:
            runs = list((root / "trained").glob("t__*"))
            if any(runner.logged_steps(r) < STEPS and (r / "checkpoints" / "latest.json").is_file() for r in runs):
                break
            time.sleep(0.02)
        assert first.poll() is None, "the sweep ended before it could be killed"
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        time.sleep(1.0)
        orphans = _processes_mentioning(str(root / "cache")) if Path("/proc").is_dir() else []
        second = subprocess.run([sys.executable, str(ROOT / "sweep.py"), *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=400)
        yield dict(root=root, args=args, orphans=orphans, rc=second.returncode, out=second.stdout, err=second.stderr)


def test_kill9_mid_sweep_then_rerun_completes_with_resume(killed_sweep):
    assert killed_sweep["orphans"] == [], "runs outlived the killed sweep"
    assert "resuming from its checkpoint" in killed_sweep["out"], killed_sweep["out"]
    for variant in ("base", "qk"):
        for seed in (0, 1):
            run = killed_sweep["root"] / "trained" / f"t__{variant}__s{seed}"
            with open(run / "log_data.csv", newline="") as f:
                steps = [int(row["step"]) for row in csv.DictReader(f)]
            assert steps == list(range(2, STEPS + 1, 2)), (run, steps)  # every eval once, none lost or doubled


def test_failing_run_is_reported_and_the_others_finish(killed_sweep):
    assert killed_sweep["rc"] == 1
    assert "failed: t__broken__s0" in killed_sweep["err"] and "failed: t__broken__s1" in killed_sweep["err"]
    assert "nope" in killed_sweep["err"]  # train.py's own error line, quoted
    summary = (killed_sweep["root"] / "sweeps" / "t" / "summary.md").read_text()
    assert "Not finished (2)" in summary and "`t__broken__s0`" in summary


def test_report_files_and_p_value(killed_sweep):
    folder = killed_sweep["root"] / "sweeps" / "t"
    for name in ("sweep.json", "summary.csv", "summary.md", "runs.csv", "val_loss.png", "best_val_loss.png"):
        assert (folder / name).is_file(), name
    assert (folder / "val_loss.png").read_bytes()[:4] == b"\x89PNG"
    with open(folder / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and [r["variant"] for r in rows] == ["base", "qk"]
    with open(folder / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    best = {v: [float(r["best_val_loss"]) for r in runs if r["variant"] == v] for v in ("base", "qk")}
    expected = welch(best["base"], best["qk"])
    assert float(rows[1]["p_value"]) == pytest.approx(expected.p_value)
    assert float(rows[1]["ci95_low"]) == pytest.approx(expected.ci_low)
    assert rows[0]["p_value"] == "" and rows[1]["test"].startswith("welch_t_two_sided")
    assert 0 < float(rows[0]["bits_per_byte_mean"]) < 8 and float(rows[0]["tokens_per_sec_mean"]) > 0
    assert "Welch's t-test" in (folder / "summary.md").read_text()


def test_runs_are_ordinary_run_folders(killed_sweep, monkeypatch):
    _point_dirs(monkeypatch, killed_sweep["root"])
    model, _, model_cfg, train_cfg = tools.load_model("t__qk__s1")
    assert model_cfg.qk_norm and train_cfg.seed == 1 and train_cfg.model_name == "t__qk__s1"


def test_finished_sweep_reruns_in_seconds_without_training(killed_sweep, monkeypatch, capsys, no_training):
    _point_dirs(monkeypatch, killed_sweep["root"])
    finished = [a for a in killed_sweep["args"] if "broken" not in a]
    start = time.perf_counter()
    assert sweep.main(finished) == 0
    seconds = time.perf_counter() - start
    assert "4 finished, 0 to resume, 0 to start" in capsys.readouterr().out
    assert seconds < 20, seconds


def test_more_seeds_add_only_the_new_runs(killed_sweep, monkeypatch, capsys, no_training):
    _point_dirs(monkeypatch, killed_sweep["root"])
    args = [a for a in killed_sweep["args"] if "broken" not in a and a != "--seeds=2"]
    assert sweep.main(args + ["--seeds=3", "--grid=lr_max=1e-3,3e-3", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    states = {line.split()[1]: line.split()[0] for line in lines if line.startswith("  ")}
    assert states["t__base__s1"] == "done" and states["t__qk__s0"] == "done"  # lr_max=1e-3 is what they used
    assert states["t__base__s2"] == "new" and states["t__qk_lr_max-3e-3__s0"] == "new"
    assert sum(s == "new" for s in states.values()) == 12 - 4


def test_changed_shared_settings_are_refused(killed_sweep, monkeypatch, capsys, no_training):
    _point_dirs(monkeypatch, killed_sweep["root"])
    assert sweep.main(killed_sweep["args"] + ["--weight_decay=0.5"]) == 2
    err = capsys.readouterr().err
    assert "other shared settings" in err and "weight_decay: (not set) -> 0.5" in err and "--overwrite" in err


def test_model_comparison_shows_a_sweep(killed_sweep, monkeypatch, capsys, no_training):
    import model_comparison
    _point_dirs(monkeypatch, killed_sweep["root"])
    assert model_comparison.main(["--sweep=t", "--bpb_texts=4"]) == 0
    out = capsys.readouterr().out
    assert "| `qk` | 2 |" in out and "Welch" in out
    assert model_comparison.main(["--sweep=nope"]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err


# --- a sweep is one process's at a time, and its record is its own ----------------------------------------------
@pytest.fixture
def sweep_copy(killed_sweep, tmp_path, monkeypatch) -> Path:
    """The killed sweep's trained/ and sweeps/ copied to tmp_path (tests here change them)."""
    for name in ("trained", "sweeps"):
        shutil.copytree(killed_sweep["root"] / name, tmp_path / name)
    _point_dirs(monkeypatch, tmp_path)
    return tmp_path


def test_a_second_sweep_process_is_refused_naming_the_first(sweep_copy, killed_sweep, capsys):
    """Today each of the two reported the other's runs as FAILED."""
    env = dict(os.environ, TEMPLATEGPT_TRAINED_DIR=str(sweep_copy / "trained"),
               TEMPLATEGPT_SWEEPS_DIR=str(sweep_copy / "sweeps"), OMP_NUM_THREADS="1")
    more = [a for a in killed_sweep["args"] if a != "--seeds=2"] + ["--seeds=3"]  # two new runs to train
    first = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *more], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = sweep_copy / "sweeps" / ".t.lock"
        deadline = time.time() + 120
        while not (lock.is_file() and f"pid {first.pid}" in lock.read_text()) and time.time() < deadline:
            assert first.poll() is None, "the first sweep ended early"
            time.sleep(0.05)
        for argv in (more, ["--name=t"], ["--name=t", "--report"]):
            assert sweep.main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"sweep {sweep_copy / 'sweeps' / 't'} is in use by pid {first.pid}" in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)


def test_a_copied_sweep_folder_is_refused_and_the_original_untouched(sweep_copy, capsys, no_training):
    """Today a copy reported into the original's folder (sweep.json names the sweep)."""
    sweeps = sweep_copy / "sweeps"
    shutil.copytree(sweeps / "t", sweeps / "t_copy")
    original = {p.name: p.read_bytes() for p in (sweeps / "t").iterdir() if p.is_file()}
    for argv in (["--name=t_copy"], ["--name=t_copy", "--report"]):
        assert sweep.main(argv) == 2
        err = capsys.readouterr().err
        assert "records the sweep 't'" in err and "--name=t" in err and err.count("\n") == 1, err
    (sweeps / "t_link").symlink_to(sweeps / "t")
    assert sweep.main(["--name=t_link", "--report"]) == 2
    assert "t_link is a symbolic link" in capsys.readouterr().err
    assert sweep.main(["--name=t_link", "--variant=base:", *tiny(sweep_copy / "cache")]) == 2  # a new definition
    assert "t_link is a symbolic link or a file" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (sweeps / "t").iterdir() if p.is_file()} == original


def test_a_recorded_sweep_is_loaded_only_by_a_plain_name_in_sweeps(sweep_copy, capsys, no_training):
    import model_comparison
    outside = sweep_copy / "elsewhere"
    shutil.copytree(sweep_copy / "sweeps" / "t", outside / "t")
    for name in ("../elsewhere/t", str(outside / "t"), "t/../t"):
        assert sweep.main([f"--name={name}", "--report"]) == 2
        assert "is not a sweep name" in capsys.readouterr().err
        assert model_comparison.main([f"--sweep={name}"]) == 2
        assert "is not a sweep name" in capsys.readouterr().err
    assert not (outside / "t" / ".." / ".t.lock").exists() and sorted(os.listdir(outside)) == ["t"]
