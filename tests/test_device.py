"""machinery/run/device.py: dtype='auto' takes bfloat16 on CPUs whose bf16 matmuls are really faster, float32 elsewhere."""
import os

import pytest
import torch

from machinery.run import device as dev

CPU = torch.device("cpu")


@pytest.fixture
def fresh_probe(tmp_path, monkeypatch):
    """An empty probe cache and no remembered choice."""
    monkeypatch.setattr(dev, "PROBE_CACHE", tmp_path / "probe.json")
    dev.cpu_bf16_choice.cache_clear()
    yield
    dev.cpu_bf16_choice.cache_clear()


def test_cpu_without_bf16_instructions_gets_float32_without_a_probe(fresh_probe, monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(dev, "measure_bf16_speedup", lambda: pytest.fail("must not probe"))
    dtype, why = dev.dtype_choice("auto", CPU)
    assert dtype == torch.float32 and "neither AMX nor AVX512-BF16" in why


@pytest.mark.parametrize("speedup,expected", [(3.5, torch.bfloat16), (1.1, torch.float32), (0.02, torch.float32)])
def test_cpu_with_bf16_instructions_follows_the_probe(fresh_probe, monkeypatch, speedup, expected):
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    monkeypatch.setattr(dev, "measure_bf16_speedup", lambda: speedup)
    dtype, why = dev.dtype_choice("auto", CPU)
    assert dtype == expected and f"{speedup:.1f}" in why


def test_probe_is_cached_per_cpu(fresh_probe, monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"amx_bf16"})
    calls = []
    monkeypatch.setattr(dev, "measure_bf16_speedup", lambda: calls.append(1) or 4.0)
    assert dev.pick_dtype("auto", CPU) == torch.bfloat16
    dev.cpu_bf16_choice.cache_clear()  # a new process: the file answers
    assert dev.pick_dtype("auto", CPU) == torch.bfloat16
    assert len(calls) == 1 and dev.PROBE_CACHE.is_file()
    dev.PROBE_CACHE.write_text("{not json")  # a corrupt cache means probing again, not a crash
    dev.cpu_bf16_choice.cache_clear()
    assert dev.pick_dtype("auto", CPU) == torch.bfloat16 and len(calls) == 2


def test_explicit_dtypes_and_errors():
    assert dev.pick_dtype("float32", CPU) == torch.float32
    assert dev.pick_dtype("bfloat16", CPU) == torch.bfloat16
    assert dev.pick_dtype("auto", torch.device("mps")) == torch.float32  # the safe default on Apple GPUs
    with pytest.raises(ValueError, match="'float16'"):
        dev.dtype_choice("float16", CPU)


def test_auto_choice_matches_a_measured_probe_on_this_machine(fresh_probe):
    """The real thing: on the CPU running the tests, 'auto' agrees with a longer matmul measurement."""
    flags = dev.cpu_flags()
    dtype, why = dev.dtype_choice("auto", CPU)
    if not any(f in flags for f in dev.BF16_CPU_FLAGS):
        assert dtype == torch.float32
        return
    speedup = max(dev.measure_bf16_speedup(size=512, repeats=8) for _ in range(2))
    if speedup >= 2 * dev.BF16_MIN_SPEEDUP:
        assert dtype == torch.bfloat16, why
    elif speedup < 1.0:
        assert dtype == torch.float32, why
    else:
        pytest.skip(f"bf16 speedup {speedup:.2f}x is too close to the {dev.BF16_MIN_SPEEDUP}x threshold to judge")


def test_threads_follow_omp_num_threads_when_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(dev, "busy_cores", lambda: pytest.fail("must not look at the load"))
    threads, why = dev.cpu_threads_choice()
    assert threads == torch.get_num_threads() and "OMP_NUM_THREADS" in why


@pytest.mark.parametrize("busy,expected", [(0.0, 4), (1.3, 3), (3.6, 1), (8.0, 1), (float("nan"), None)])
def test_threads_take_the_cores_others_leave_free(monkeypatch, busy, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(dev.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(dev, "busy_cores", lambda: busy)
    threads, why = dev.cpu_threads_choice()
    assert threads == (torch.get_num_threads() if expected is None else expected)
    assert ("load unknown" in why) if expected is None else f"{threads} of 4 cores" in why


def test_busy_cores_sees_a_busy_process():
    import subprocess
    import sys
    idle = dev.busy_cores(0.2)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        dev.busy_cores(0.3)  # let it start
        busy = dev.busy_cores(0.5)
    finally:
        spinner.kill()
    if idle != idle:  # NaN: no /proc/stat here
        pytest.skip("no /proc/stat on this system")
    assert 0 <= idle <= (dev.os.cpu_count() or 1) + 0.1
    assert busy >= 0.7, busy  # the spinner alone keeps one core busy


def test_deterministic_kernels_are_switched_on_and_off_by_the_config(monkeypatch):
    """TrainConfig.deterministic: torch's deterministic kernels, strictly (warn-only mode leaves SDPA's backward
    nondeterministic), and cuBLAS's fixed workspace, set before any GPU work; off again for the next run."""
    from config import TrainConfig
    from machinery.run.setup import set_up
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "placeholder")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # absent again after the test
    try:
        machine = set_up(TrainConfig(device="cpu", dtype="float32", deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert "deterministic kernels" in machine.dtype_reason
    finally:
        machine = set_up(TrainConfig(device="cpu", dtype="float32"))
    assert not torch.are_deterministic_algorithms_enabled() and "deterministic" not in machine.dtype_reason
