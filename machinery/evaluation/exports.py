"""A run's Hugging Face export, made once and reused: evaluate.py, the server and the judge tests all load the
run through transformers, and exporting a large run takes a while.

The export lives in <temp>/templategpt-exports/<run>-<key>, where key is the CRC-32 of the run's weights file
and model_config.json: new weights (a resumed run, a retrained one) get a new folder, never a stale one. The
folder appears whole or not at all (built in a hidden temporary folder, then renamed), so two processes
exporting the same run at once both end with a complete export. Nothing here deletes a folder it did not make.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from machinery.fileio import checksum, file_checksum, temp_folder
from machinery.run import runs

CACHE_NAME = "templategpt-exports"


def default_cache_root() -> Path:
    return Path(tempfile.gettempdir()) / CACHE_NAME


def export_key(run_dir: Path) -> str:
    """CRC-32 of the weights file's bytes, continued over model_config.json's."""
    crc = file_checksum(run_dir / "model.safetensors")
    crc = checksum([(run_dir / runs.MODEL_CONFIG).read_bytes()], start=crc)
    return f"{crc:08x}"


def cached_export(run: str | Path, cache_root: str | Path | None = None) -> Path:
    """The folder of `run`'s Hugging Face export (AutoModelForCausalLM.from_pretrained loads it), exported
    now unless an export of the same weights and config is already there."""
    from machinery.interop.export import export_run

    run_dir = runs.resolve_run(run)
    if not (run_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"no weights at {run_dir / 'model.safetensors'}: the run has not saved a model yet")
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    final = root / f"{run_dir.name}-{export_key(run_dir)}"
    if (final / "config.json").is_file():
        return final
    staging = temp_folder(root)  # ours alone: removed below whatever happens
    try:
        export_run(run_dir, staging / "model")
        try:
            os.rename(staging / "model", final)
        except OSError:
            if not (final / "config.json").is_file():  # not another process's finished export: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
