"""What a run costs: peak memory and wall time in log_data.csv, summary figures from a log (old logs too), whether
a run was still improving, the cost plot's hollow markers, and old logs that lack the new columns."""
from __future__ import annotations

import math

import numpy as np
import pytest

from machinery.run import cost
from machinery.run.run_log import COLUMNS, FIRST_COLUMNS, RunLog


def _row(step, val, **extra):
    return {"step": str(step), "tokens": str(64 * step), "elapsed_s": str(0.1 * step), "tokens_per_sec": "640.0",
            "val_loss": str(val), **{k: str(v) for k, v in extra.items()}}


def test_summary_of_a_log_says_whether_the_run_was_still_improving():
    falling = [_row(2, 5.0, wall_s=1, peak_memory_mb=300), _row(4, 4.0, wall_s=2, peak_memory_mb=500),
               _row(6, 3.5, wall_s=3, peak_memory_mb=400)]
    s = cost.summarize_log(falling, flops_per_token=1000.0)
    assert s["still_improving"] and s["best_step"] == 6 and s["best_val_loss"] == 3.5
    assert s["wall_s"] == 3 and s["peak_memory_mb"] == 500 and s["train_flops"] == 6 * 64 * 1000.0
    overfit = falling + [_row(8, 3.6, wall_s=4, peak_memory_mb=400)]
    s = cost.summarize_log(overfit)
    assert not s["still_improving"] and s["best_step"] == 6 and s["final_val_loss"] == 3.6
    assert math.isnan(s["train_flops"])  # no FLOPs per token given
    old = [{k: v for k, v in r.items() if k in FIRST_COLUMNS} for r in overfit]  # logged before the cost columns
    s = cost.summarize_log(old)
    assert math.isnan(s["wall_s"]) and math.isnan(s["peak_memory_mb"]) and s["tokens"] == 8 * 64


def test_peak_memory_sees_a_large_allocation_and_resets():
    cost.reset_peak_memory("cpu")
    before = cost.peak_memory_mb("cpu")
    block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, touched
    assert cost.peak_memory_mb("cpu") >= before + 60
    del block
    if "VmHWM" in cost.memory_kind("cpu"):  # Linux: the peak restarts from the current use
        cost.reset_peak_memory("cpu")
        assert cost.peak_memory_mb("cpu") < before + 30


def test_an_old_log_resumes_and_gains_the_new_columns(tmp_path):
    path = tmp_path / "log_data.csv"
    path.write_text(",".join(FIRST_COLUMNS) + "\n" + ",".join(["4", "256"] + ["1.0"] * 8) + "\n")
    log = RunLog.resume(path, up_to_step=4)
    log.append({**dict.fromkeys(COLUMNS, 2.0), "step": 8, "tokens": 512, "wall_s": 9.5, "peak_memory_mb": 321.0})
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[1].endswith("1.0,,") and lines[2].endswith(",9.5,321.0")
    path.write_text("step,tokens,when\n4,256,1\n")  # not a prefix of the columns: refused
    with pytest.raises(ValueError, match="not this run's log"):
        RunLog.resume(path, up_to_step=4)


def test_cost_plot_draws_runs_still_improving_hollow():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from machinery.comparison.plots import plot_cost
    table = pd.DataFrame({"best_val_loss": [3.0, 2.5, 2.8], "wall_s": [10.0, 20.0, float("nan")],
                          "train_flops": [1e12, 2e12, 3e12], "peak_memory_mb": [400.0, 800.0, float("nan")],
                          "still_improving": [False, True, False]}, index=["a", "b", "old"])
    fig = plot_cost(table)
    wall, flops, memory = fig.axes
    assert len(wall.collections) == 2 and len(flops.collections) == 3  # 'old' logged no wall time or memory
    filled = [len(c.get_facecolors()) > 0 for c in flops.collections]  # 'none' faces: no face colours
    assert filled == [True, False, True]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "old", "hollow: still improving"]
    plt.close(fig)
