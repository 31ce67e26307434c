"""Code provenance (machinery/run/provenance.py) and the code column of the comparison: a scratch clone of the
project whose modules/mlp.py is edited between two trainings, the diff in the run folder, --code_diff, and
--resume after another edit; the record without git, with git missing, bounded, and never fatal."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from machinery.comparison import code as code_module
from machinery.run import provenance
from machinery.run.provenance import code_patch, code_state, describe_changes, record

ROOT = Path(__file__).resolve().parents[1]
NOT_COPIED = {"trained", "data", "docs", "bench", "tests", "sweeps", "comparisons", "exported"}  # top level only


def _copy_ignore(folder: str, names: list[str]) -> set[str]:
    top = NOT_COPIED if Path(folder) == ROOT else set()
    return {n for n in names if n in top or n in (".git", "__pycache__") or n.endswith(".tmp")}
TINY = dict(dim=16, num_layers=1, num_q_heads=2, num_kv_heads=1, max_seq_len=16, tokenizer="byte",
            micro_batch_size=2, max_iters=4, eval_interval=2, eval_batches=1, checkpoint_interval=2, warmup_iters=1,
            dtype="float32", device="cpu")


def _git(*args, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The project's code (as it is now, committed or not) in a fresh git repository with one commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    path = tmp_path_factory.mktemp("clone") / "project"
    shutil.copytree(ROOT, path, ignore=_copy_ignore)
    _git("init", "-q", cwd=path)
    _git("add", "-A", cwd=path)
    _git("commit", "-q", "-m", "scratch", cwd=path)
    return path


def _run(clone: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TEMPLATEGPT_TRAINED_DIR": str(clone / "trained"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, script, *args], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=240)


def _train(clone: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    settings = {**TINY, "dataset": str(ROOT / "data/samples/tinystories"), "model_name": name}
    done = _run(clone, "train.py", *[f"--{k}={v}" for k, v in settings.items()], *extra)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_an_uncommitted_edit_is_named_diffed_and_noticed_on_resume(clone):
    mlp = clone / "modules" / "mlp.py"
    _train(clone, "before")
    mlp.write_text(mlp.read_text() + "# Edited in a scratch clone (not committed).\n")
    _train(clone, "after")
    trained = clone / "trained"

    # the run folder holds the diff against the commit, and its provenance names the commit and the file
    record_after = json.loads((trained / "after" / "provenance.json").read_text())["sessions"]
    assert len(record_after) == 1 and record_after[0]["code"]["dirty"] is True
    assert record_after[0]["code"]["changed"] == ["modules/mlp.py"]
    assert record_after[0]["code"]["commit"] == _git("rev-parse", "HEAD", cwd=clone).strip()
    assert "+# Edited in a scratch clone (not committed)." in (trained / "after" / "code.diff").read_text()
    assert not (trained / "before" / "code.diff").exists()  # a clean tree has nothing to diff
    assert record_after[0]["machine"]["cpu"] and record_after[0]["command"][0] == "train.py"

    # model_comparison.py names the changed file against the first run
    out = clone / "cmp"
    done = _run(clone, "model_comparison.py", "before", "after", f"--out={out}", "--val_data=None", "--x=step")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out / "summary.csv", index_col="run")
    assert table.loc["before", "code_diff"].startswith("reference: ")
    assert table.loc["after", "code_diff"] == "modules/mlp.py changed"
    assert "modules/mlp.py changed" in done.stdout

    # --code_diff prints the lines, rebuilt from the commit + code.diff (the tree has moved on meanwhile)
    _edit(mlp, "Edited in a scratch clone", "Edited twice in a scratch clone")
    done = _run(clone, "model_comparison.py", "--code_diff", "before", "after")
    assert done.returncode == 0, done.stderr
    assert "+# Edited in a scratch clone (not committed)." in done.stdout
    assert "--- a/modules/mlp.py (before)" in done.stdout and "+++ b/modules/mlp.py (after)" in done.stdout

    # --resume after another edit says so in one line, and records its own session and diff
    resumed = _train(clone, "after", "--resume", "--max_iters=6")
    notes = [line for line in resumed.stdout.splitlines() if "code differs" in line]
    assert len(notes) == 1 and "modules/mlp.py changed" in notes[0] and "after 4" in notes[0], resumed.stdout
    sessions = json.loads((trained / "after" / "provenance.json").read_text())["sessions"]
    assert [s["session"] for s in sessions] == ["start", "resume"] and sessions[1]["step"] == 4
    assert "Edited twice" in (trained / "after" / sessions[1]["code"]["diff"]).read_text()
    log = pd.read_csv(trained / "after" / "log_data.csv")
    assert log["wall_s"].is_monotonic_increasing and log["wall_s"].iloc[-1] >= log["elapsed_s"].iloc[-1]
    summary = json.loads((trained / "after" / "summary.json").read_text())
    assert summary["last_step"] == 6 and summary["peak_memory_mb"] > 0 and summary["wall_s"] > 0

    # the comparison also says the code changed during the run
    done = _run(clone, "model_comparison.py", "before", "after", f"--out={out}", "--val_data=None", "--x=step")
    table = pd.read_csv(out / "summary.csv", index_col="run")
    assert table.loc["after", "code_diff"] == "modules/mlp.py changed; on resume at step 4: modules/mlp.py changed"


def test_code_diff_errors_are_one_line(clone, tmp_path):
    for args, message in ((["--code_diff", "before"], "takes two runs"),
                          (["--code_diff", "before", "nope"], "no model named 'nope'"),
                          (["--code_diff", "before", "after", "--out=x"], "takes two runs")):
        done = _run(clone, "model_comparison.py", *args)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    old = clone / "trained" / "old"
    shutil.copytree(clone / "trained" / "before", old)
    (old / "provenance.json").unlink()
    done = _run(clone, "model_comparison.py", "--code_diff", "before", "old")
    assert done.returncode == 2 and "no provenance.json" in done.stderr


# --- the record ------------------------------------------------------------------------------------------
def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "modules").mkdir(parents=True)
    (root / "trained" / "r").mkdir(parents=True)
    (root / "train.py").write_text("print('train')\n")
    (root / "modules" / "mlp.py").write_text("x = 1\n")
    (root / "trained" / "r" / "log.py").write_text("not code\n")  # results are not source
    (root / "notes.md").write_text("prose\n")
    return root


def test_outside_git_each_source_file_is_hashed_with_a_note(tmp_path, monkeypatch):
    root = _project(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # tmp_path must not be inside a repository
    state = code_state(root)
    assert state["source"] == "files" and state["commit"] is None and "not" in state["note"]
    assert sorted(state["files"]) == ["modules/mlp.py", "train.py"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    assert "git is not installed" in code_state(root)["note"]
    said = []
    record(root / "trained" / "r", "cpu", root=root, say=said.append)
    session = json.loads((root / "trained" / "r" / "provenance.json").read_text())["sessions"][0]
    assert said == [] and session["code"]["diff"] is None and session["code"]["files"] == state["files"]


def test_the_record_never_stops_a_run(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(provenance, "code_state", broken)
    said = []
    record(tmp_path / "run", "cpu", say=said.append)  # returns normally
    assert len(said) == 1 and "not written" in said[0] and "disk on fire" in said[0]


def test_the_diff_is_bounded_and_says_what_it_left_out(tmp_path):
    root = _project(tmp_path)
    _git("init", "-q", cwd=root)
    _git("add", "train.py", cwd=root)
    _git("commit", "-q", "-m", "one", cwd=root)
    (root / "train.py").write_text("print('changed')\n")
    (root / "big.py").write_text("y = 2\n" * 5000)
    (root / "blob.model").write_bytes(b"\0\1\2")
    state = code_state(root)
    assert state["changed"] == ["train.py"] and set(state["untracked"]) == {"big.py", "blob.model", "modules/mlp.py"}
    patch, left_out = code_patch(state, root, limit=2000)
    assert "+print('changed')" in patch and "+x = 1" in patch and "big.py" not in patch.split("\n# ")[-1]
    assert {o["path"] for o in left_out} == {"big.py", "blob.model"}
    assert "# LEFT OUT: big.py: the diff would pass" in patch and "binary" in patch


def test_describe_changes_names_changed_added_and_removed_files():
    old = {"a.py": "1", "b.py": "2", "c.py": "3"}
    new = {"a.py": "1", "b.py": "9", "d.py": "4"}
    assert describe_changes(old, new) == ["b.py changed", "c.py removed", "d.py added"]
    assert provenance.shorten([f"f{i}" for i in range(6)], 2) == "f0, f1 and 4 more"


def test_comparison_code_column_for_runs_with_and_without_a_record(tmp_path):
    class FakeRun:
        def __init__(self, path):
            self.path = path
    runs = {}
    for name, files in (("a", {"m.py": "1"}), ("b", {"m.py": "1"}), ("c", {"m.py": "2", "n.py": "3"}), ("d", None)):
        folder = tmp_path / name
        folder.mkdir()
        if files is not None:
            code = {"commit": "abcdef0123", "dirty": name == "c", "files": files}
            (folder / "provenance.json").write_text(json.dumps({"sessions": [{"started": "t", "code": code}]}))
        runs[name] = FakeRun(folder)
    assert code_module.code_differences(runs) == {"a": "reference: abcdef0", "b": "same",
                                                  "c": "m.py changed, n.py added",
                                                  "d": "unknown (no provenance.json)"}
