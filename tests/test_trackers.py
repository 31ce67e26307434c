"""--tracker: TensorBoard and W&B (offline) receive the rows of log_data.csv and the configs; read back here."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import train
from machinery.run import trackers
from machinery.run.trackers import make_tracker
from tests.helpers import read_log

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, with its settings and caches in tmp_path rather than the home folder."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def tiny_run(sample_data: Path, tmp_path: Path, tracker: str) -> list[str]:
    settings = dict(dim=32, num_layers=1, num_q_heads=2, num_kv_heads=2, max_seq_len=16, tokenizer="byte",
                    dataset=str(sample_data / "tinystories"), cache_dir=str(tmp_path / "cache"), micro_batch_size=2,
                    max_iters=6, eval_interval=2, eval_batches=1, warmup_iters=1, dtype="float32", device="cpu",
                    model_name="run", tracker=tracker)
    return [f"--{k}={v}" for k, v in settings.items()]


def tensorboard_rows(log_dir: Path) -> dict[int, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir))
    events.Reload()
    rows: dict[int, dict] = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            rows.setdefault(event.step, {})[tag] = event.value
    return rows


def test_tensorboard_gets_the_rows_of_log_data_csv(sample_data, tmp_path, trained_dir):
    pytest.importorskip("tensorboard", reason="--tracker=tensorboard needs tensorboard (requirements-optional.txt)")
    import numpy as np
    assert train.main(tiny_run(sample_data, tmp_path, "tensorboard")) == 0
    csv_rows = read_log(trained_dir / "run")
    board = tensorboard_rows(trained_dir / "run" / "tensorboard")
    assert sorted(board) == [int(r["step"]) for r in csv_rows] == [2, 4, 6]
    for row in csv_rows:  # TensorBoard keeps float32: equal once the CSV value is rounded the same way
        logged = board[int(row["step"])]
        assert logged.keys() == row.keys() - {"step"}
        assert all(logged[k] == np.float32(float(v)) for k, v in row.items() if k != "step")


def wandb_records(run_file: Path):
    """The protobuf records of an offline W&B run file: a 7-byte header, then LevelDB-style log records
    (4-byte checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2
    data, pos, block, pending = run_file.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_gets_the_rows_and_configs(tmp_path, offline_wandb):
    pytest.importorskip("wandb", reason="--tracker=wandb needs wandb (requirements-optional.txt)")
    rows = [dict(step=s, tokens=64 * s, train_loss=5.0 / s + 1e-9, lr=1e-3 / 3 * s, grad_norm=0.1234567891234)
            for s in (2, 4, 6)]
    configs = {"model": {"dim": 32, "tokenizer": "byte"}, "train": {"lr_max": 1e-3, "init_from": None}}
    tracker = make_tracker("wandb")
    tracker.start(tmp_path / "run", configs)
    for row in rows:
        tracker.log(row)
    tracker.finish()
    run_file, = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = [], {}
    for record in wandb_records(run_file):
        if record.HasField("history"):
            history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        if record.HasField("run"):
            config.update({_key(item): json.loads(item.value_json) for item in record.run.config.update})
    logged = [{k: v for k, v in h.items() if not k.startswith("_")} | {"step": h["_step"]} for h in history]
    assert logged == rows  # exact: W&B keeps float64
    assert config["model"] == configs["model"] and config["train"] == configs["train"]


def test_missing_package_and_unknown_tracker_are_one_line(monkeypatch):
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"--tracker=wandb needs the wandb package: pip install wandb"):
        make_tracker("wandb")
    assert type(make_tracker("none")) is trackers.Tracker  # needs nothing
    with pytest.raises(ValueError, match="allowed values are 'none', 'tensorboard', 'wandb'"):
        make_tracker("mlflow")
