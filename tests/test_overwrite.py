"""A command deletes only what it made: --overwrite replaces an earlier export or a run, and refuses, changing
nothing, a run given as an export folder, a sweep, a git work tree, the project, a parent of any of them, a link,
a dangling link and a file (machinery/own_folders.py).

Everything happens in a stand-in project under tmp_path (its own source folder, trained/, sweeps/ and .git), so a
guard that failed would delete only that."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import export_hf
import train
from machinery import own_folders

pytest.importorskip("transformers", reason="export needs transformers (requirements-optional.txt)")
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def listing(folder: Path) -> dict[str, int]:
    """Every entry under folder (links not followed) with its size: equal listings mean nothing was deleted."""
    return {str(p.relative_to(folder)): (p.lstat().st_size if not p.is_dir() or p.is_symlink() else -1)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """tmp_path/project: source files, .git, trained/gpt2_atto (a real run), sweeps/s; plus, outside it, a git
    work tree, a folder holding a run, a user's folder, a file, a link and a dangling link."""
    proj = tmp_path / "project"
    (proj / ".git").mkdir(parents=True)
    (proj / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (proj / "train.py").write_text("# the source\n")
    shutil.copytree(ROOT / "trained" / "gpt2_atto", proj / "trained" / "gpt2_atto")
    (proj / "sweeps" / "s").mkdir(parents=True)
    (proj / "sweeps" / "s" / "sweep.json").write_text("{}\n")
    other = tmp_path / "other_repo"
    (other / ".git").mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    shutil.copytree(ROOT / "trained" / "gpt2_atto", tmp_path / "holder" / "copied_run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    (tmp_path / "file.txt").write_text("a file")
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    monkeypatch.setattr(own_folders, "PROJECT_ROOT", proj)
    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(proj / "trained"))
    monkeypatch.setenv("TEMPLATEGPT_SWEEPS_DIR", str(proj / "sweeps"))
    monkeypatch.chdir(proj)
    return proj


REFUSED = {  # OUT given to export_hf.py --overwrite -> words of the one-line refusal
    "trained/..": "is the project source folder",
    ".": "is the project source folder",
    "trained": "or a folder above it",
    "trained/gpt2_atto": "holds a run",
    "sweeps/s": "holds a sweep",
    "sweeps": "or a folder above it",
    "../other_repo": "holds a git work tree",
    "../holder": "holds a run",
    "..": "is the project source folder",
    "../mine": "was not written by this project",
    "../link": "is a symbolic link",
    "../dangling": "which does not exist",
    "../file.txt": "is a file",
}


@pytest.mark.parametrize("out", list(REFUSED))
def test_export_overwrite_refuses_what_it_did_not_write(project, out, capsys):
    everything = project.parent
    before = listing(everything)
    assert export_hf.main(["gpt2_atto", out, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert REFUSED[out] in err and "nothing was changed" in err, err
    assert listing(everything) == before


def test_export_overwrite_replaces_an_earlier_export(project, capsys):
    assert export_hf.main(["gpt2_atto", "../exported"]) == 0
    marker = project.parent / "exported" / own_folders.EXPORT_MARKER
    assert marker.is_file()
    (project.parent / "exported" / "stale.txt").write_text("from an older export")
    assert export_hf.main(["gpt2_atto", "../exported"]) == 2  # without --overwrite: says how
    assert "add --overwrite" in capsys.readouterr().err
    assert export_hf.main(["gpt2_atto", "../exported", "--overwrite"]) == 0
    assert marker.is_file() and not (project.parent / "exported" / "stale.txt").exists()
    assert not [p for p in project.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


@pytest.mark.parametrize("setup, words", [
    ("user folder", "was not written by this project"),
    ("run with .git", "holds a git work tree"),
    ("project", "is the project source folder"),
])
def test_train_overwrite_replaces_only_runs(project, setup, words, monkeypatch, capsys):
    """train.py --overwrite on trained/<name> that is not a run, a run someone made a git repository of, or (with
    TEMPLATEGPT_TRAINED_DIR one level up) the project itself."""
    name = "x"
    if setup == "user folder":
        shutil.copytree(project.parent / "mine", project / "trained" / name)
    elif setup == "run with .git":
        shutil.copytree(project / "trained" / "gpt2_atto", project / "trained" / name)
        (project / "trained" / name / ".git").mkdir()
    else:
        monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(project.parent))
        name = "project"
    before = listing(project.parent)
    assert train.main([f"--model_name={name}", "--overwrite", "--dim=32", "--num_layers=1", "--vocab_len=512",
                       "--max_iters=1", "--warmup_iters=0", "--device=cpu"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
    assert listing(project.parent) == before


def test_overwrite_of_a_half_created_run_is_offered_and_works(project, capsys):
    """A folder holding only train_config.json (a start killed between the two files): every message points to
    --overwrite, and --overwrite replaces it (today --resume and a plain start sent the user to each other)."""
    half = project / "trained" / "half"
    half.mkdir()
    shutil.copy(project / "trained" / "gpt2_atto" / "train_config.json", half)
    args = ["--model_name=half", "--dim=32", "--num_layers=1", "--num_q_heads=2", "--num_kv_heads=2",
            "--vocab_len=512", "--max_seq_len=16", "--tokenizer=bpe_tinyStories", "--micro_batch_size=2",
            f"--dataset={ROOT / 'data' / 'samples' / 'tinystories'}", f"--cache_dir={project.parent / 'cache'}",
            "--max_iters=2", "--warmup_iters=0", "--eval_interval=2", "--eval_batches=1", "--device=cpu"]
    for extra in ([], ["--resume"]):
        assert train.main(args[:1] + extra if extra else args) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--overwrite" in last and "--resume" not in last.split("--overwrite")[0].split(":")[-1], last
    assert train.main(args + ["--overwrite"]) == 0
    assert (half / "model_config.json").is_file()


def test_replace_own_folder_swaps_by_renames(tmp_path):
    old, new = tmp_path / "out", tmp_path / ".new.tmp"
    old.mkdir()
    (old / own_folders.EXPORT_MARKER).write_text("ours")
    (old / "a").write_text("old")
    new.mkdir()
    (new / "b").write_text("new")
    own_folders.replace_own_folder(new, old, "export")
    assert sorted(p.name for p in old.iterdir()) == [own_folders.EXPORT_MARKER, "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    os.chmod(tmp_path, 0o755)


def _enospc(*args, **kwargs):
    import errno
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["weights", "tokenizer"])
def test_full_disk_while_exporting_keeps_the_earlier_export(project, where, monkeypatch, capsys):
    import safetensors.torch

    from machinery.interop import tokenizer as hf_tokenizer
    out = project.parent / "exported"
    assert export_hf.main(["gpt2_atto", str(out)]) == 0
    before = listing(project.parent)
    monkeypatch.setattr(*((safetensors.torch, "save_file") if where == "weights" else (hf_tokenizer, "write")),
                        _enospc)
    assert export_hf.main(["gpt2_atto", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"could not write {out}: No space left on device" in err and "Free space on the disk" in err
    assert listing(project.parent) == before  # the earlier export whole, no temp folder left
