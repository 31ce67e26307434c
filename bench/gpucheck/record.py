"""One JSON line per measurement, appended (and flushed to disk) the moment it is measured, so a check that is
killed keeps every figure it had. Every line of a section has the same keys (SCHEMA): the GPU run and the
--smoke rehearsal produce the same keys, which tests/test_gpu_check.py holds them to."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

# the keys of every line (the follow-up's list first); None where a key does not apply
COMMON_KEYS = ("section", "preset", "variant", "device", "gpu", "dtype", "compile", "tokens_per_sec", "mfu",
               "peak_memory_mb", "command", "item", "status", "error", "seconds", "compile_backend", "run_id",
               "date", "torch", "smoke")
SCHEMA = {
    "env": ("gpu_memory_gb", "driver", "cuda", "cudnn", "triton", "python", "cpu", "sm_count", "capability",
            "datasheet_tflops", "matmul_tflops", "matmul_size", "copy_gb_per_s", "sdpa_flash", "sdpa_cudnn",
            "flex_attention"),
    "tests": ("passed", "failed", "skipped", "errors", "failures", "skip_reasons", "timed_out"),
    "train": ("params", "seq_len", "micro_batch", "tokens_per_step", "steps", "ms_per_step", "first_step_s",
              "flops_per_token", "mfu_vs_measured", "activation_checkpointing", "parallel", "batch_probes",
              "graph_breaks", "unique_graphs", "speedup_vs_reference"),
    "decode": ("params", "batch", "prompt_len", "new_tokens", "mode", "first_call_s", "ms_per_token",
               "tokens_identical", "tokens_matching", "speedup_vs_eager", "graph_breaks", "unique_graphs"),
    "run": ("params", "steps", "killed_at_step", "resumed_from_step", "rows_compared", "exact", "max_loss_diff",
            "tolerance", "loss_first", "loss_last", "loss_fell", "deterministic_warnings", "train_command"),
    "attention": ("mask", "kernel", "batch", "seq_len", "heads", "head_dim", "passes", "ms_per_call",
                  "first_call_s", "max_abs_diff_vs_sdpa"),
}
STATUSES = ("ok", "error", "skipped", "timeout")


def slug(text: str) -> str:
    """A file-name-safe form of a GPU or CPU name: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "unknown"


def results_name(date: str, machine: str) -> str:
    """<date>_<gpu>.jsonl, the file bench/results/ keeps."""
    return f"{date}_{slug(machine)}.jsonl"


class Recorder:
    """Appends rows to every file in `paths`. `base` holds what every row of this check shares (run_id, gpu,
    device, torch, smoke, command...)."""

    def __init__(self, paths: list[Path], base: dict):
        self.paths, self.base = [Path(p) for p in paths], dict(base)
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, section: str, item: str, status: str = "ok", **values) -> dict:
        """One line for `item` of `section`; a key outside the schema is a programming error."""
        if status not in STATUSES:
            raise ValueError(f"status={status!r} is not one of {STATUSES}")
        keys = COMMON_KEYS + SCHEMA[section]
        unknown = set(values) - set(keys)
        if unknown:
            raise KeyError(f"{section} lines have no key(s) {sorted(unknown)}: add them to record.SCHEMA")
        row = dict.fromkeys(keys)
        row.update({k: v for k, v in self.base.items() if k in row})
        row.update(values, section=section, item=item, status=status, date=time.strftime("%Y-%m-%d %H:%M:%S"))
        line = json.dumps(row, default=str) + "\n"
        for path in self.paths:
            with open(path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return row


def read_rows(path: Path, run_id: str | None = None) -> list[dict]:
    """The rows of a results file (those of one check when run_id is given); a torn last line is skipped."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if run_id is None or row.get("run_id") == run_id:
                rows.append(row)
    return rows
