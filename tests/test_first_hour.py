"""The original template's workflow, from a fresh clone with no network: edit config.py, then python train.py."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

from config import TrainConfig
from machinery import PROJECT_ROOT as ROOT
from machinery.data.sources import local_path

# no network: the hub library may not even try, and its address leads nowhere
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}


def test_the_default_dataset_is_the_bundled_sample_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig()
    assert cfg.dataset == "data/samples/tinystories"
    assert (local_path(cfg.dataset) / "train.jsonl").is_file()
    assert not local_path("no/such/folder").is_absolute()  # a missing path stays as given (the error names it)


def test_warmup_defaults_to_a_tenth_of_the_run():
    assert TrainConfig().warmup_steps == 100
    assert TrainConfig(max_iters=50).warmup_steps == 5
    assert TrainConfig(max_iters=50, warmup_iters=0).warmup_steps == 0
    assert dataclasses.replace(TrainConfig(), max_iters=50).warmup_steps == 5  # None stays None: 10% of the new length


def test_train_py_with_no_settings_trains_offline_on_the_bundled_sample(fresh_clone, tmp_path):
    """`python train.py` (here with few steps) on a fresh clone, run from another folder, no network."""
    clone = tmp_path / "clone"  # its own copy: the shared fresh_clone holds no runs beyond the shipped ones
    shutil.copytree(fresh_clone, clone)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TEMPLATEGPT_TRAINED_DIR"} | OFFLINE
    proc = subprocess.run([sys.executable, str(clone / "train.py"), "--max_iters=3", "--eval_batches=1",
                           "--model_name=first"], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = clone / "trained" / "first"
    assert json.loads((run / "train_config.json").read_text())["dataset"] == "data/samples/tinystories"
    with open(run / "log_data.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [3]
    assert (run / "model.safetensors").is_file() and (run / "training_curves.png").is_file()
    assert sorted(p.name.split("_")[:2] for p in (elsewhere / "data_cache").iterdir()) == \
        [["data-samples-tinystories", "train"], ["data-samples-tinystories", "validation"]]


def test_written_files_get_the_users_usual_permissions(sample_data, trained_dir, tmp_path):
    """What the project writes is readable as the umask allows (0644 / 0755 under the usual 022), not owner-only
    as tempfile's files (0600) and folders (0700) would be: run folders, checkpoints, the token cache, exports."""
    import train
    from machinery.fileio import _UMASK
    from machinery.interop.export import export_run
    cache = tmp_path / "cache"
    assert train.main(["--dim=32", "--num_layers=1", "--max_seq_len=16", "--micro_batch_size=2", "--max_iters=2",
                       "--eval_batches=1", f"--dataset={sample_data / 'tinystories'}", f"--cache_dir={cache}",
                       "--model_name=run"]) == 0
    exported = export_run(ROOT / "trained" / "llama3_atto", tmp_path / "exported")
    written = [p for folder in (trained_dir, cache, exported) for p in (folder, *folder.rglob("*"))]
    assert any(p.name == "tokens.bin" for p in written) and any(p.name == "model.safetensors" for p in written)
    assert any(p.parent.name == "checkpoints" for p in written)
    wrong = {str(p): oct(p.stat().st_mode & 0o777) for p in written
             if p.stat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~_UMASK}
    assert not wrong, f"umask {_UMASK:03o}: {wrong}"
