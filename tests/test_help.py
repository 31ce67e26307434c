"""Every command line answers --help (and -h) with its options and exits 0, without doing any work."""
import importlib
import sys

import pytest

SCRIPTS = ["train", "inference", "model_comparison", "sweep", "export_hf", "evaluate", "bench.bench_train",
           "bench.gpu_check",
           "bench.profile_train", "bench.bench_inference", "bench.bench_decode_hf", "bench.coord_check",
           "bench.mup_lr_transfer", "bench.bench_checksum", "bench.bench_vs_nanogpt", "bench.bench_data",
           "bench.bench_tokenize"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, flag, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script, flag])
    main = importlib.import_module(script).main
    try:
        code = main([flag])
    except SystemExit as e:  # scripts built on argparse exit from --help
        code = e.code
    out = capsys.readouterr().out
    assert code in (0, None), out
    assert len(out.splitlines()) >= 5 and "--" in out
