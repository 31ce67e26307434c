"""Raw documents from a Hugging Face hub dataset or a local file/folder, as an iterator of strings.

`dataset` is either a hub name ('noanabeshima/TinyStoriesV2', 'HuggingFaceFW/fineweb-edu' with
data_subset='sample-10BT') or a local path: a .txt, .jsonl, .json or .parquet file, or a folder of them
whose file names give the split (train.*, validation.*, as the `datasets` library infers them). A relative
path is looked up in the current directory, then in the project's root (so the bundled samples,
'data/samples/...', the default dataset among them, work from any directory). A path that exists locally
wins over a hub name.

Validation: the dataset's own validation split when it has one. Otherwise a fixed, seeded held-out
part of 'train' that never overlaps the rest: the last val_fraction of the text for a single
continuous .txt document (nanoGPT's Shakespeare split), else a seeded random subset of documents.
"""
from __future__ import annotations

import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from machinery import PROJECT_ROOT
from machinery.data import plain_files
from machinery.data.file_errors import first_broken_file
from machinery.data.hub import LOCAL_HINT, hub_call, looked_in

SPLITS = ("train", "validation")
FORMATS = {".txt": "txt", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_ROWS_PER_READ = 1000       # rows pulled from `datasets` per batch (columnar reads are much faster)
_TXT_READ_CHARS = 1 << 22   # a .txt file split on doc_separator is read this many characters at a time
_HOLDOUT_BLOCK = 1 << 16    # documents per block of held-out draws (independent of how we iterate)


@dataclass(frozen=True)
class Source:
    """Where the documents come from. Local sources list their data files per split."""
    name: str                                   # `dataset` as given
    data_subset: Optional[str] = None
    path: Optional[Path] = None                 # resolved local path; None for the hub
    files: dict = field(default_factory=dict)   # local: split -> sorted list of Paths
    formats: dict = field(default_factory=dict)  # local: split -> 'txt' | 'json' | 'parquet'

    @property
    def is_local(self) -> bool:
        return self.path is not None


def _looks_like_path(name: str) -> bool:
    # Hub names are 'owner/name' or 'name'; anything else path-like is meant to be local.
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            or Path(name).suffix.lower() in FORMATS)


def _format_of(files: list[Path], where: str) -> str:
    kinds = {FORMATS[f.suffix.lower()] for f in files}
    if len(kinds) > 1:
        raise ValueError(f"{where} mixes file types ({', '.join(sorted(f.name for f in files))}); "
                         f"use one of .txt / .jsonl|.json / .parquet per split")
    return kinds.pop()


def _datasets():
    """The `datasets` package, or None where it is not installed (then local files are read by
    machinery/data/plain_files.py, with the same results)."""
    try:
        import datasets
    except ImportError:
        return None
    return datasets


def _hub_datasets(name: str):
    """The `datasets` package for a hub dataset; without it, one clear error."""
    datasets = _datasets()
    if datasets is None:
        raise ValueError(f"dataset {name!r} is not a local path, and loading it from the Hugging Face hub needs the "
                         f"`datasets` package (pip install datasets). {LOCAL_HINT}")
    return datasets


def _split_files(folder: Path) -> dict:
    """Split -> every file `datasets` would assign to it (or plain_files.py's same rules without it)."""
    empty = ValueError(f"dataset folder {folder} contains no data files: add train.jsonl (or .txt, .json, "
                       f".parquet) and optionally validation.jsonl")
    if _datasets() is None:
        resolved = plain_files.folder_splits(folder)
        if not resolved:
            raise empty
        return resolved
    from datasets.data_files import DataFilesDict, get_data_patterns
    for entry in folder.iterdir():  # `datasets` skips pipes and devices without a word: name them
        if entry.suffix.lower() in FORMATS and entry.exists() and not (entry.is_file() or entry.is_dir()):
            raise ValueError(_not_a_file(entry, str(folder)))
    try:
        patterns = get_data_patterns(str(folder))
    except Exception as e:  # EmptyDatasetError: no files at all
        raise empty from e
    return DataFilesDict.from_patterns(patterns, base_path=str(folder))


def _folder_splits(folder: Path) -> dict:
    """Split -> data files, inferred from file names exactly as `datasets` does (train.*, validation.*)."""
    resolved = _split_files(folder)
    splits, ignored = {}, set()
    for split, paths in resolved.items():
        keep = [Path(p) for p in paths if Path(p).suffix.lower() in FORMATS and not Path(p).name.startswith(".")]
        ignored |= {Path(p).name for p in paths} - {p.name for p in keep}
        if keep and str(split) in SPLITS:
            splits[str(split)] = sorted(keep)
    if "train" not in splits:
        raise ValueError(f"dataset folder {folder} has no training files of a supported type "
                         f"({', '.join(FORMATS)}); name them train.* (found: {', '.join(sorted(ignored)) or 'none'})")
    return splits


def local_path(dataset: str) -> Path:
    """`dataset` as a path: relative to the current directory, or else to the project's root when it exists
    only there (the bundled samples from any directory). The path may not exist."""
    path = Path(dataset).expanduser()
    if not path.exists() and not path.is_absolute() and (PROJECT_ROOT / path).exists():
        return PROJECT_ROOT / path
    return path


def resolve_source(dataset: str, data_subset: Optional[str] = None) -> Source:
    """Decide whether `dataset` is local (relative to the CWD or the project root) or a hub name, and find
    local files."""
    path = local_path(dataset)
    if not path.exists():
        if _looks_like_path(dataset):
            raise FileNotFoundError(f"dataset path {dataset!r} does not exist (looked in {looked_in()}): a "
                                    f"relative path is looked for in the folder you run from, then in the project")
        return Source(name=dataset, data_subset=data_subset)
    path = path.resolve()
    if data_subset is not None:
        raise ValueError(f"data_subset={data_subset!r} selects a configuration of a hub dataset, but "
                         f"{dataset!r} is a local path; pass --data_subset=None")
    if path.is_dir():
        files = _folder_splits(path)
    elif not path.is_file():
        raise ValueError(_not_a_file(path, dataset))
    elif path.suffix.lower() in FORMATS:
        files = {"train": [path]}
    else:
        raise ValueError(f"unsupported file type {path.suffix or '(none)'!r} for dataset {dataset!r}; "
                         f"supported: {', '.join(FORMATS)} files, or a folder of them")
    for split_files in files.values():
        for f in split_files:
            if not f.is_file():
                raise ValueError(_not_a_file(f, dataset))
            if f.stat().st_size == 0:
                raise ValueError(f"dataset file {f} is empty")
    formats = {s: _format_of(fs, f"split {s!r} of {dataset!r}") for s, fs in files.items()}
    return Source(name=dataset, path=path, files=files, formats=formats)


def _not_a_file(path: Path, dataset: str) -> str:
    """Why a dataset path that exists is no data file: a FIFO or a device would block or never end."""
    mode = path.stat().st_mode
    kind = next((name for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                                         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
                 if test(mode)), "not a regular file")
    return (f"dataset {dataset!r}: {path} is {kind}, not a data file (it could be read only once, or never end): "
            f"give a regular .txt, .jsonl/.json or .parquet file, or a folder of them")


def has_validation_split(dataset: str | Source, data_subset: Optional[str] = None) -> bool:
    """Whether the dataset has its own validation split (hub: asks the hub; local: validation.* files)."""
    src = dataset if isinstance(dataset, Source) else resolve_source(dataset, data_subset)
    if src.is_local:
        return "validation" in src.files
    datasets = _hub_datasets(src.name)
    names = hub_call(src.name, datasets.get_dataset_split_names, src.name, src.data_subset)
    return "validation" in names


def source_fingerprint(src: Source) -> dict:
    """What identifies the data for caching: the hub name, or each local file's path, size and mtime."""
    if not src.is_local:
        return {"hub": src.name, "data_subset": src.data_subset}
    return {"path": str(src.path),
            "files": {s: [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in fs]
                      for s, fs in sorted(src.files.items())}}


class _HeldOut:
    """Seeded per-document coin flips: document i is held out iff its draw < fraction.

    Draws come in fixed blocks keyed by (seed, block), so a document's fate depends only on its
    index, never on how far we iterate; train and validation are exact complements.
    """

    def __init__(self, fraction: float, seed: int):
        self.fraction, self.seed, self._block, self._draws = fraction, seed, -1, None

    def __call__(self, index: int) -> bool:
        block = index // _HOLDOUT_BLOCK
        if block != self._block:
            rng = np.random.default_rng([self.seed, 0x5EED, block])
            self._block, self._draws = block, rng.random(_HOLDOUT_BLOCK) < self.fraction
        return bool(self._draws[index % _HOLDOUT_BLOCK])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from e


def _txt_documents(path: Path, separator: str) -> Iterator[str]:
    """Split a text file on `separator` while reading it in pieces (bounded memory). Pieces are stripped."""
    buffer = ""
    try:
        with open(path, encoding="utf-8") as f:
            while chunk := f.read(_TXT_READ_CHARS):
                parts = (buffer + chunk).split(separator)
                buffer = parts.pop()
                yield from (p.strip() for p in parts)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e})") from e
    yield buffer.strip()


def _table_documents(src: Source, split: str, streaming: bool, text_field: str) -> Iterator[str]:
    """Texts of one split read through `datasets` (local json/parquet are always streamed: no copy)."""
    datasets = _hub_datasets(src.name)
    if src.is_local:
        fmt = src.formats[split]
        ds = datasets.load_dataset(fmt, data_files={split: [str(f) for f in src.files[split]]},
                                   split=split, streaming=True)
    else:
        ds = hub_call(src.name, datasets.load_dataset, src.name, src.data_subset, split=split,
                       streaming=streaming)
    columns = ds.column_names  # None for some streamed json until the first rows are read
    if columns is not None:
        _check_field(src, text_field, columns)
        ds = ds.select_columns([text_field])
    checked = columns is not None
    for rows in ds.iter(batch_size=_ROWS_PER_READ):
        if not checked:
            _check_field(src, text_field, list(rows))
            checked = True
        yield from rows[text_field]


def _local_table_documents(src: Source, split: str, text_field: str) -> Iterator[str]:
    """Rows of local json/parquet files; a broken file is one ValueError naming the file (and the line)."""
    if _datasets() is None:  # (importing it sets its log level: that happens first, here)
        # read them ourselves; plain_files.py names a broken file and line itself
        yield from plain_files.table_texts(src.files[split], src.formats[split], text_field,
                                           lambda columns: _check_field(src, text_field, columns))
        return
    datasets_log = logging.getLogger("datasets")
    level = datasets_log.level
    datasets_log.setLevel(logging.CRITICAL)  # it logs the failure before raising it: we say it once, better
    try:
        yield from _table_documents(src, split, True, text_field)
    except Exception:
        problem = first_broken_file(src.files[split], src.formats[split])
        if problem is None:
            raise
        raise ValueError(problem) from None
    finally:
        datasets_log.setLevel(level)


def _check_field(src: Source, text_field: str, columns: list) -> None:
    if text_field not in columns:
        raise ValueError(f"dataset {src.name!r} has no text field {text_field!r}; its fields are: "
                         f"{', '.join(map(repr, columns)) or '(none)'}. Set --text_field to one of them.")


def _raw_documents(src: Source, split: str, streaming: bool, text_field: str,
                   doc_separator: Optional[str]) -> Iterator[str]:
    """Every document (row) of a source split in order, empty ones included."""
    if src.is_local and src.formats[split] == "txt":
        for f in src.files[split]:
            if doc_separator:
                yield from _txt_documents(f, doc_separator)
            else:
                yield _read_text(f)
    elif src.is_local:
        yield from _local_table_documents(src, split, text_field)
    else:
        yield from _table_documents(src, split, streaming, text_field)


def iter_documents(dataset: str, split: str = "train", data_subset: Optional[str] = None,
                   streaming: bool = False, text_field: str = "text", doc_separator: Optional[str] = None,
                   val_fraction: float = 0.05, seed: int = 1337, skip: int = 0) -> Iterator[str]:
    """Iterate over the non-empty documents of `split` ('train' or 'validation') in a fixed order.

    skip: leave out the first `skip` documents of the split (resuming a partial pre-tokenization).
    Bad arguments and missing paths raise here, at the call; a missing text field, an empty split
    or an unreachable hub when iteration starts. Errors are FileNotFoundError / ValueError /
    RuntimeError (hub unreachable), each saying what to do.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: use one of {SPLITS}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be between 0 and 1")
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip={skip!r} must be an integer >= 0")
    src = resolve_source(dataset, data_subset)
    own_validation = has_validation_split(src)
    return _documents(src, split, own_validation, streaming, text_field, doc_separator, val_fraction,
                      seed, skip)


def _documents(src: Source, split: str, own_validation: bool, streaming: bool, text_field: str,
               doc_separator: Optional[str], val_fraction: float, seed: int, skip: int) -> Iterator[str]:
    source_split = split if own_validation else "train"
    continuous = (src.is_local and src.formats[source_split] == "txt" and not doc_separator
                  and len(src.files[source_split]) == 1)
    raw = _raw_documents(src, source_split, streaming, text_field, doc_separator)
    if own_validation:
        docs = (d for d in raw if d)
    elif continuous:
        text = _read_text(src.files["train"][0])
        cut = int(len(text) * (1 - val_fraction))  # nanoGPT: data[:int(n*0.9)], data[int(n*0.9):]
        part = text[:cut] if split == "train" else text[cut:]
        docs = iter([part] if part else [])
    else:
        held_out = _HeldOut(val_fraction, seed)
        want = split == "validation"
        docs = (d for i, d in enumerate(raw) if d and held_out(i) == want)

    # Skipped documents are still read (a held-out filter and dropped empty rows make row counts
    # differ from document counts), but not tokenized, which is the expensive part.
    count = 0
    for doc in docs:
        if not isinstance(doc, str):
            raise ValueError(f"dataset {src.name!r} field {text_field!r} holds {type(doc).__name__}, not text")
        count += 1
        if count > skip:
            yield doc
    if count == 0:
        held = split == "validation" and not own_validation
        where = f"the held-out {val_fraction:.0%} of 'train'" if held else f"split {source_split!r}"
        raise ValueError(f"dataset {src.name!r} has no documents in {where}"
                         + (" (try a larger --val_fraction or add a validation.* file)" if held else ""))
