"""bench/bench_vs_nanogpt.py runs our trainings and parses nanoGPT's log (a stand-in nanoGPT here)."""
import json
import textwrap

import pytest

from bench import bench_vs_nanogpt as bench

pytestmark = pytest.mark.usefixtures("one_thread")

FAKE_NANOGPT = textwrap.dedent('''
    import sys
    print("step 0: train loss 4.2, val loss 4.2")
    print("iter 0: loss 4.2, time 900.00ms, mfu -100.00%")
    for i in range(1, 9):
        print(f"iter {i}: loss 3.0, time {20.0 if i != 5 else 500.0:.2f}ms, mfu 1.00%")
    print("step 8: train loss 2.5, val loss 2.75")
''')


def test_nanogpt_log_is_parsed(tmp_path):
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare_char" / "train.bin").write_bytes(b"")
    (tmp_path / "train.py").write_text(FAKE_NANOGPT)
    row = bench.run_nanogpt(tmp_path, iters=8, threads=1)
    assert row["val_loss"] == 2.75
    assert row["tokens_per_sec"] == pytest.approx(bench.TOKENS_PER_ITER / 0.020)  # the median skips the eval step


def test_our_side_trains_and_reports(tmp_path, capsys):
    assert bench.main(["--iters=10"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["variant"] for r in rows] == ["ours_float32", "ours_bfloat16"]
    for r in rows:
        assert r["iters"] == 10 and r["tokens_per_sec"] > 0 and 0 < r["val_loss"] < 10 and r["cpu_flags"]


def test_missing_prepared_data_is_one_line(tmp_path, capsys):
    assert bench.main([f"--nanogpt_dir={tmp_path}"]) == 2
    assert "prepare.py" in capsys.readouterr().err
