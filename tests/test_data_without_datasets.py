"""Local data without the `datasets` package (the GPU machine has none): the same splits and the same documents
as with it, clear errors for broken files, and one line for a hub dataset it cannot load."""
from __future__ import annotations

import json
import sys

import pytest

from machinery.data.sources import iter_documents, resolve_source
from tests.helpers import write_table

DOCS = [f"Story {i}: a {'tall ' * (i % 4)}tree by the river {i}." for i in range(60)]


@pytest.fixture
def no_datasets(monkeypatch):
    """`import datasets` fails, as where it is not installed."""
    def block():
        monkeypatch.setitem(sys.modules, "datasets", None)
    return block


def both_ways(no_datasets, read):
    """read() with `datasets`, then without it."""
    with_it = read()
    no_datasets()
    return with_it, read()


LAYOUTS = {
    "train and valid": ["train.jsonl", "valid.jsonl"],
    "keywords among separators": ["training_data-01.jsonl", "my-dev.jsonl", "test.jsonl", "README.md"],
    "no split in any name": ["data.jsonl", "more.jsonl"],
    "split folders": ["train/a.jsonl", "train/b.jsonl", "val/c.jsonl"],
    "splits inside a folder": ["x/train.jsonl", "x/validation.jsonl"],
    "keywords inside words": ["mytrain.jsonl", "trainee.jsonl", "validate.jsonl"],
    "hidden files": ["train.jsonl", ".cache/validation.jsonl", ".validation.jsonl"],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_folder_splits_are_those_datasets_infers(layout, tmp_path, no_datasets):
    for name in LAYOUTS[layout]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"text": name}) + "\n")
    with_it, without = both_ways(no_datasets, lambda: resolve_source(str(tmp_path)).files)
    assert without == with_it and "train" in without


def test_the_bundled_sample_gives_the_same_documents(sample_data, no_datasets):
    folder = str(sample_data / "tinystories")
    read = lambda: [list(iter_documents(folder, split)) for split in ("train", "validation")]  # noqa: E731
    with_it, without = both_ways(no_datasets, read)
    assert without == with_it and [len(docs) for docs in without] == [900, 80]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_table_files_give_the_same_documents(suffix, tmp_path, no_datasets):
    path = tmp_path / f"stories{suffix}"
    write_table(path, [{"body": d, "n": i} for i, d in enumerate(DOCS)])
    def read():
        return [list(iter_documents(str(path), split, text_field="body", seed=2)) for split in ("train", "validation")]
    with_it, without = both_ways(no_datasets, read)
    assert without == with_it and sorted(without[0] + without[1]) == sorted(DOCS)


@pytest.mark.parametrize("content, words", [
    ('{"text": "fine"}\n{"text": "broken\n', "line 2: not a valid JSON record"),
    ('{"body": "x", "title": "y"}\n', "'body', 'title'"),
    ('["not", "a record"]\n', "where a record"),
])
def test_broken_files_are_one_clear_error(content, words, tmp_path, no_datasets):
    (tmp_path / "data.jsonl").write_text(content)
    no_datasets()
    with pytest.raises(ValueError, match=words):
        list(iter_documents(str(tmp_path / "data.jsonl"), "train"))


def test_a_hub_dataset_needs_the_package(no_datasets):
    no_datasets()
    with pytest.raises(ValueError, match="needs the `datasets` package.*data/samples/tinystories"):
        list(iter_documents("someone/some-dataset", "train"))
