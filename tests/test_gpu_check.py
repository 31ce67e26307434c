"""bench/gpu_check.py cannot rot: its --smoke rehearsal runs every section on the CPU with `datasets` made
unimportable (as on the GPU machine) and writes the keys a GPU run writes; bad options, a missing GPU, a spent
budget and a failing step each end as they should; the batch search, the goals and the results parsing are
checked on their own; the tree the GPU machine receives stays under its 64 MiB limit."""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_check
from bench.gpucheck import plan
from bench.gpucheck.context import Context
from bench.gpucheck.cuda_tests import junit_counts
from bench.gpucheck.goals import GOALS, summary
from bench.gpucheck.record import COMMON_KEYS, SCHEMA, Recorder, read_rows
from bench.gpucheck.train_speed import largest_batch

ROOT = Path(__file__).resolve().parents[1]
SMOKE_CPU_SECONDS = 150  # CPU time of the whole rehearsal, all processes: ~70 s measured (2-core Xeon)


def without_datasets(tmp_path: Path) -> dict:
    """An environment whose Python cannot import `datasets` (sys.modules entry None: 'not installed')."""
    folder = tmp_path / "no_datasets"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text('import sys\nsys.modules["datasets"] = None\n')
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "out"
    env = without_datasets(tmp)
    probe = subprocess.run([sys.executable, "-c", "import datasets"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0, "the datasets block does not work"
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", f"--out={out}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    files = list(out.glob("*.jsonl"))
    rows = read_rows(files[0]) if files else []
    print(f"smoke: {time.time() - start:.0f} s wall, {cpu:.0f} s CPU, load {os.getloadavg()}")
    return dict(proc=proc, out=out, rows=rows, cpu=cpu, files=files)


def test_smoke_runs_every_item_without_datasets(smoke):
    proc, rows = smoke["proc"], smoke["rows"]
    log = (smoke["out"] / "gpu_check.log").read_text()[-5000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log
    planned = {(step.section, item) for step in plan.STEPS for item in step.items}
    assert planned <= {(r["section"], r["item"]) for r in rows}
    for r in rows:
        expected_skip = r["item"].endswith("cuda_graphs")  # no CUDA graphs on a CPU
        assert r["status"] == ("skipped" if expected_skip else "ok"), r
    assert smoke["cpu"] < SMOKE_CPU_SECONDS, f"the rehearsal took {smoke['cpu']:.0f} CPU seconds"


def test_smoke_lines_have_the_keys_of_a_gpu_run(smoke):
    for r in smoke["rows"]:
        assert list(r) == list(COMMON_KEYS + SCHEMA[r["section"]]), r["section"]
        assert r["smoke"] is True and r["device"] == "cpu" and r["run_id"] == smoke["rows"][0]["run_id"]
    train = [r for r in smoke["rows"] if r["section"] == "train"]
    assert {r["variant"] for r in train} == {"ours", "reference"}
    assert all(r["tokens_per_sec"] > 0 and r["mfu"] is not None and r["peak_memory_mb"] > 0 for r in train)
    run = {r["item"]: r for r in smoke["rows"] if r["section"] == "run"}
    assert run["float32"]["exact"] is True and run["float32"]["loss_fell"] is True
    assert run["float32"]["killed_at_step"] == run["float32"]["resumed_from_step"] > 0
    decode = [r for r in smoke["rows"] if r["section"] == "decode" and r["status"] == "ok"]
    assert all(r["tokens_identical"] for r in decode) and {r["mode"] for r in decode} == {"eager", "compiled"}


def test_smoke_writes_only_into_out_and_prints_the_goals(smoke):
    out = smoke["out"]
    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names), names  # what $OUT returns
    assert {"gpu_check.log", "summary.txt"} <= set(names) and len(smoke["files"]) == 1
    assert not list((ROOT / "bench" / "results").glob("*smoke*.jsonl"))  # a rehearsal adds nothing to the repo
    text = smoke["proc"].stdout
    for goal in GOALS:
        assert goal.name in text
    assert "smoke: not judged" in text and text.strip().endswith("in all")


def test_without_a_gpu_and_without_smoke_it_says_so_in_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no CUDA GPU is visible") and "--smoke" in err[0]


@pytest.mark.parametrize("argv, words", [(["--smoke", "--only=trian"], "'trian' is not a section or step"),
                                         (["--smoke", "--compile_backend=fast"], "compile_backend"),
                                         (["--smoke", "--budget_s=0"], "must be positive"),
                                         (["--smoke", "--sections=env"], "unknown option --sections")])
def test_bad_options_are_one_line(argv, words, capsys):
    assert gpu_check.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_spent_budget_records_the_rest_as_skipped_and_says_how_to_run_it(tmp_path, capsys):
    assert gpu_check.main(["--smoke", "--only=decode,attention", "--budget_s=1", f"--out={tmp_path}"]) == 0
    rows = read_rows(next(tmp_path.glob("*.jsonl")))
    wanted = [item for step in plan.select_steps("decode,attention") for item in step.items]
    assert sorted(r["item"] for r in rows) == sorted(wanted)
    assert all(r["status"] == "skipped" and r["error"].startswith("budget") for r in rows)
    assert "--only=decode,decode_more,attention --smoke" in capsys.readouterr().out


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch, capsys):
    real = gpu_check.run_step
    monkeypatch.setattr(gpu_check, "run_step", lambda step, *a: "error" if step.name == "env" else real(step, *a))
    assert gpu_check.main(["--smoke", "--only=env,tests", f"--out={tmp_path}"]) == 1
    rows = {r["item"]: r for r in read_rows(next(tmp_path.glob("*.jsonl")))}
    assert rows["machine"]["status"] == "error" and "process failed" in rows["machine"]["error"]
    assert rows["test_cuda"]["status"] == "ok"


def context(tmp_path: Path, deadline_in: float = 60) -> Context:
    recorder = Recorder([tmp_path / "r.jsonl"], dict(run_id="t", smoke=True))
    return Context("train", True, time.time() + deadline_in, recorder, plan.sizes(True, "train"), "eager",
                   log=lambda text: None)


def test_an_item_that_fails_or_does_not_fit_is_one_line_and_the_next_runs(tmp_path):
    ctx, ran = context(tmp_path), []
    ctx.run_item("gpt2_124M", 1, lambda: 1 / 0)
    ctx.run_item("llama_1B", 10 ** 6, lambda: ran.append("too long"))
    ctx.run_item("llama_1B_ac", 1, lambda: ran.append("ran"))
    rows = read_rows(tmp_path / "r.jsonl")
    assert [(r["item"], r["status"]) for r in rows] == [("gpt2_124M", "error"), ("llama_1B", "skipped")]
    assert rows[0]["error"].startswith("ZeroDivisionError") and ran == ["ran"]
    with pytest.raises(KeyError, match="no key"):
        ctx.write("x", tokens=1)


def test_the_batch_search_doubles_until_out_of_memory_and_never_past_its_limit():
    def probe(batch):
        probed.append(batch)
        if batch > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return 100.0 * batch

    probed, freed = [], []
    best, probes = largest_batch(probe, 1, 64, lambda: freed.append(1))
    assert best == 8 and probed == [1, 2, 4, 8, 16] and len(freed) == 5
    assert probes[-1] == dict(batch=16, fits=False, peak_memory_mb=None)
    probed.clear()
    assert largest_batch(probe, 2, 5, lambda: None)[0] == 4 and probed == [2, 4]
    assert largest_batch(probe, 16, 64, lambda: None)[0] is None


def test_goals_are_judged_from_the_lines():
    def row(section, item, **values):
        return dict(dict.fromkeys(COMMON_KEYS + SCHEMA[section]), section=section, item=item, status="ok", **values)
    rows = [row("train", "gpt2_124M", variant="ours", mfu=0.55, speedup_vs_reference=1.2),
            row("train", "llama_1B", variant="ours", mfu=0.38), row("train", "llama_1B_ac", variant="ours", mfu=0.41),
            row("run", "float32", exact=True, max_loss_diff=0.0)]
    verdicts = {g.name: g.verdict(g.value(rows), smoke=False) for g in GOALS}
    assert verdicts["gpt2_124M ctx 1024 MFU (bf16, compiled)"] == "pass"
    assert verdicts["gpt2_124M tokens/s over the nanoGPT-style reference"] == "MISS"
    assert verdicts["llama_1B ctx 2048 MFU (largest micro-batch)"] == "pass"  # the better of the two
    assert verdicts["resume after SIGKILL exact in float32"] == "pass"
    assert verdicts["decode batch 1: compiled / CUDA-graph step over eager"] == "not measured"
    assert "MISS" in summary(rows, smoke=False)


def test_junit_counts(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite><testcase name="a"/><testcase name="b"><failure message="boom&#10;more"/>'
                   '</testcase><testcase name="c"><skipped message="no GPU"/></testcase>'
                   '<testcase name="d"><skipped message="no GPU"/></testcase></testsuite></testsuites>')
    assert junit_counts(xml) == dict(passed=1, failed=1, skipped=2, errors=0, failures=["b: boom"],
                                     skip_reasons=["no GPU"])


def test_the_tree_sent_to_the_gpu_machine_stays_under_its_limit():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in listed.stdout.decode().split("\0") if name]
    size = sum(f.stat().st_size for f in files if f.is_file())
    assert size < 48 * 2 ** 20, f"{size / 2 ** 20:.1f} MiB tracked: the GPU machine takes 64 MiB in all"


def test_the_plan_names_only_items_the_sections_have():
    import importlib

    from bench.gpucheck.section import MODULES
    for step in plan.STEPS:
        assert set(step.items) <= set(importlib.import_module(f"bench.gpucheck.{MODULES[step.section]}").ITEMS)
        assert plan.sizes(True, step.section).keys() == plan.sizes(False, step.section).keys()
    assert json.dumps(plan.GPU) and json.dumps(plan.SMOKE)  # the settings travel as JSON
