"""Local data read without the `datasets` package, for machines that lack it (the GPU machine of
bench/gpu_check.py has none): the split of each file in a folder, and the rows of .jsonl / .json / .parquet
files. machinery/data/sources.py uses `datasets` when it can be imported and these otherwise, so the same
folder gives the same splits and documents either way (tests/test_data.py compares the two).

Split names follow `datasets`' rules for a folder: a folder in the path named for a split (train/,
validation-2024/, my_dev/) decides first; else the file name (train.jsonl, validation.jsonl, my-val-01.jsonl);
a file named for no split at all makes every file training data. A name counts when the keyword stands alone
between separators: any of "-._ " or a digit, or the start or end of the name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

SPLIT_KEYWORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
                  "test": ("test", "testing", "eval", "evaluation")}
_SEPARATORS = set("-._ 0123456789")
_IGNORED = {"README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dummy_data.zip",
            "dataset_dict.json"}  # documentation and metadata beside the data, never data


def _standalone(name: str, keyword: str, at_end: bool) -> bool:
    """keyword in name with a separator (or the name's start) before it and a separator after it (or, when
    at_end, the name's end)."""
    start = name.find(keyword)
    while start != -1:
        end = start + len(keyword)
        before_ok = start == 0 or name[start - 1] in _SEPARATORS
        after_ok = (end < len(name) and name[end] in _SEPARATORS) or (at_end and end == len(name))
        if before_ok and after_ok:
            return True
        start = name.find(keyword, start + 1)
    return False


def _files(folder: Path) -> list[Path]:
    """Every visible file under folder (no hidden files or folders, no metadata files)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in _IGNORED
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def folder_splits(folder: Path) -> dict[str, list[Path]]:
    """Split name -> the files under folder that belong to it, by the rules above."""
    files = _files(folder)
    by_dir = {split: [f for f in files if any(_standalone(d, k, at_end=True) for d in f.relative_to(folder).parts[:-1]
                                              for k in keywords)]
              for split, keywords in SPLIT_KEYWORDS.items()}
    if any(by_dir.values()):
        return {split: found for split, found in by_dir.items() if found}
    by_name = {split: [f for f in files if any(_standalone(f.name, k, at_end=False) for k in keywords)]
               for split, keywords in SPLIT_KEYWORDS.items()}
    if any(by_name.values()):
        return {split: found for split, found in by_name.items() if found}
    return {"train": files} if files else {}


def _json_rows(path: Path) -> Iterator[dict]:
    """The records of a JSON Lines file, or of a .json file holding one list of records."""
    if path.suffix.lower() == ".json":
        try:
            whole = json.loads(path.read_bytes())
        except ValueError:
            whole = None  # not one document: JSON Lines after all
        if isinstance(whole, list):
            yield from whole
            return
        if whole is not None:
            yield whole
            return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not a valid JSON record ({e.msg} at column {e.colno}); "
                                 f"fix or remove that line") from None


def table_texts(files: list[Path], fmt: str, text_field: str, check_field) -> Iterator:
    """The `text_field` of every row of the files, in order. check_field(columns) raises for a missing field."""
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading .parquet files needs the `datasets` or `pyarrow` package: pip install "
                             "pyarrow") from None
        for path in files:
            table = pq.ParquetFile(path)
            check_field(table.schema_arrow.names)
            for batch in table.iter_batches(columns=[text_field]):
                yield from batch.column(0).to_pylist()
        return
    checked = False
    for path in files:
        for row in _json_rows(path):
            if not isinstance(row, dict):
                raise ValueError(f"{path} holds a {type(row).__name__} where a record (an object with a "
                                 f"{text_field!r} field) was expected")
            if not checked:
                check_field(list(row))
                checked = True
            if text_field not in row:
                check_field(list(row))
            yield row[text_field]
