"""Data layer: document sources, the pre-tokenized cache and resumable batches (all local, no network)."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from config import TrainConfig
from machinery.data.batches import TokenBatches, document_ids
from machinery.data.pretokenize import cache_folder, load_tokens
from machinery.data.sources import has_validation_split, iter_documents

DOCS = [f"Story {i}: the {'big ' * (i % 5)}cat sat on mat number {i}." for i in range(200)]


class ByteStandIn:
    """The Tokenizer interface in miniature (UTF-8 bytes), counting the documents it encodes."""

    def __init__(self, name="standin", vocab_len=259):
        self.name, self.vocab_len, self.bos_id, self.eos_id, self.pad_id = name, vocab_len, 256, 257, 258
        self.encoded_docs = 0

    def encode(self, text):
        if isinstance(text, list):
            self.encoded_docs += len(text)
            return [list(t.encode()) for t in text]
        self.encoded_docs += 1
        return list(text.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode()


def cfg(tmp_path, dataset, **kw):
    return TrainConfig(dataset=str(dataset), cache_dir=str(tmp_path / "cache"), **kw)


def packed(docs, tok):
    return np.concatenate([[tok.bos_id, *tok.encode(d), tok.eos_id] for d in docs])


def write_jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


# ---- sources ------------------------------------------------------------------------------------------
def test_shakespeare_validation_is_exactly_the_last_ten_percent(sample_data):
    path = sample_data / "tinyshakespeare" / "input.txt"
    text = path.read_text()
    n = len(text)
    train = list(iter_documents(str(path), "train", val_fraction=0.1))
    val = list(iter_documents(str(path), "validation", val_fraction=0.1))
    assert train == [text[:int(n * 0.9)]] and val == [text[int(n * 0.9):]]  # nanoGPT's split
    assert not has_validation_split(str(path))


def test_txt_with_separator_splits_documents_and_holds_out_a_seeded_subset(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n<|endoftext|>\n".join(DOCS) + "\n<|endoftext|>\n")
    train = list(iter_documents(str(path), "train", doc_separator="<|endoftext|>", val_fraction=0.2, seed=3))
    val = list(iter_documents(str(path), "validation", doc_separator="<|endoftext|>", val_fraction=0.2, seed=3))
    assert sorted(train + val) == sorted(DOCS) and not set(train) & set(val)
    assert 15 <= len(val) <= 65  # ~20% of 200
    assert [d for d in DOCS if d in set(train)] == train  # file order is kept
    other = list(iter_documents(str(path), "validation", doc_separator="<|endoftext|>", val_fraction=0.2, seed=4))
    assert other != val  # the seed picks the subset


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_table_files_give_the_same_documents(tmp_path, suffix):
    path = tmp_path / f"stories{suffix}"
    rows = [{"body": d, "n": i} for i, d in enumerate(DOCS)]
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        pd.DataFrame(rows).to_parquet(path)
    train = list(iter_documents(str(path), "train", text_field="body", seed=1))
    val = list(iter_documents(str(path), "validation", text_field="body", seed=1))
    reference = list(iter_documents(str(write_jsonl(tmp_path / "ref.jsonl", DOCS)), "validation", seed=1))
    assert val == reference and sorted(train + val) == sorted(DOCS)


def test_folder_split_files_are_the_splits(sample_data, tmp_path):
    folder = sample_data / "tinystories"
    assert has_validation_split(str(folder))
    train = list(iter_documents(str(folder), "train"))
    val = list(iter_documents(str(folder), "validation"))
    read = lambda name: [json.loads(line)["text"] for line in (folder / name).read_text().splitlines()]
    assert train == read("train.jsonl") and val == read("validation.jsonl")
    assert (len(train), len(val)) == (900, 80)
    txt = tmp_path / "txtfolder"
    txt.mkdir()
    (txt / "train.txt").write_text("hello train")
    (txt / "validation.txt").write_text("hello val")
    assert list(iter_documents(str(txt), "validation")) == ["hello val"]


def test_local_path_wins_over_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "noanabeshima" / "TinyStoriesV2").mkdir(parents=True)
    write_jsonl(tmp_path / "noanabeshima" / "TinyStoriesV2" / "train.jsonl", DOCS)
    assert len(list(iter_documents("noanabeshima/TinyStoriesV2", "train"))) + \
        len(list(iter_documents("noanabeshima/TinyStoriesV2", "validation"))) == len(DOCS)


@pytest.mark.parametrize("name, content, error, words", [
    ("missing.jsonl", None, FileNotFoundError, "does not exist"),
    ("empty.jsonl", "", ValueError, "is empty"),
    ("data.csv", "text\nhi\n", ValueError, "unsupported file type"),
    ("blank.jsonl", '{"text": ""}\n', ValueError, "no documents"),
    ("fields.jsonl", '{"body": "x", "title": "y"}\n', ValueError, "'body', 'title'"),
])
def test_bad_local_data_gives_clear_errors(tmp_path, name, content, error, words):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(error, match=words):
        list(iter_documents(str(tmp_path / name), "train"))


def test_unreachable_hub_says_so_and_suggests_a_local_path(monkeypatch, tmp_path):
    import datasets.config
    import huggingface_hub.constants
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # what no network looks like, but instant
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="could not reach the Hugging Face hub.*--dataset=data/samples/tinystories"):
        list(iter_documents("noanabeshima/TinyStoriesV2", "train"))
    with pytest.raises(ValueError, match="data_subset"):
        iter_documents(str(write_jsonl(tmp_path / "a.jsonl", DOCS)), data_subset="sample-10BT")


def test_hub_failures_while_loading(monkeypatch, tmp_path):
    import datasets
    from datasets.exceptions import DatasetNotFoundError
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("machinery.data.hub.check_hub_reachable", lambda dataset: None)  # as if online
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda name, subset=None: ["train"])
    for raised, error, words in ((ConnectionError("Couldn't reach 'a/b' on the Hub (ConnectError)"), RuntimeError,
                                  "could not reach"),
                                 (DatasetNotFoundError("no such dataset"), FileNotFoundError, "neither a local path")):
        def fail(*args, _raised=raised, **kwargs):
            raise _raised
        monkeypatch.setattr(datasets, "load_dataset", fail)
        with pytest.raises(error, match=words):
            list(iter_documents("a/b", "train", streaming=True))


# ---- pre-tokenization ---------------------------------------------------------------------------------
def test_packing_puts_every_token_in_exactly_one_place(sample_data, tmp_path):
    tok = ByteStandIn()
    c = cfg(tmp_path, sample_data / "tinystories")
    for split in ("train", "validation"):
        tokens = load_tokens(c, tok, split, show_progress=False)
        docs = list(iter_documents(c.dataset, split))
        assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
        np.testing.assert_array_equal(tokens, packed(docs, tok))
        manifest = json.loads((cache_folder(c, tok, split) / "manifest.json").read_text())
        assert manifest["num_docs"] == len(docs) and manifest["complete"] and manifest["exhausted"]


@pytest.mark.parametrize("name, vocab", [("byte", None), ("bpe_tinyStories", 1024)])
def test_real_tokenizers(sample_data, tmp_path, name, vocab):
    from machinery.data.tokenizer import get_tokenizer
    try:
        tok = get_tokenizer(name, vocab)
    except ValueError as e:
        pytest.skip(f"tokenizer not built here: {e}")
    c = cfg(tmp_path, sample_data / "tinystories")
    tokens = load_tokens(c, tok, "validation", show_progress=False)
    np.testing.assert_array_equal(tokens, packed(list(iter_documents(c.dataset, "validation")), tok))
    assert tok.name in cache_folder(c, tok, "validation").name


def test_cache_hit_skips_tokenizing_and_changes_invalidate(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    tok = ByteStandIn()
    first = load_tokens(cfg(tmp_path, path), tok, "train", show_progress=False)
    encoded = tok.encoded_docs
    again = load_tokens(cfg(tmp_path, path), tok, "train", show_progress=False)
    assert tok.encoded_docs == encoded and np.array_equal(first, again)  # served from the cache
    folders = {cache_folder(cfg(tmp_path, path), tok, "train")}
    for change in (lambda: (ByteStandIn("other"), cfg(tmp_path, path)),
                   lambda: (ByteStandIn(vocab_len=300), cfg(tmp_path, path)),
                   lambda: (tok, cfg(tmp_path, path, val_fraction=0.1))):
        t, c = change()
        folders.add(cache_folder(c, t, "train"))
    write_jsonl(path, DOCS[::-1])
    os.utime(path, ns=(1, 1))
    folders.add(cache_folder(cfg(tmp_path, path), tok, "train"))
    assert len(folders) == 5  # each change gets its own cache
    fresh = load_tokens(cfg(tmp_path, path), tok, "train", show_progress=False)
    assert tok.encoded_docs > encoded and not np.array_equal(fresh, first)


@pytest.mark.parametrize("damage", ["no_manifest", "incomplete", "short_file", "garbled_manifest"])
def test_half_written_cache_is_rebuilt(tmp_path, damage):
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    c, tok = cfg(tmp_path, path), ByteStandIn()
    good = np.array(load_tokens(c, tok, "train", show_progress=False))
    folder = cache_folder(c, tok, "train")
    manifest = folder / "manifest.json"
    if damage == "no_manifest":
        manifest.unlink()
    elif damage == "incomplete":
        manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), complete=False)))
    elif damage == "short_file":
        os.truncate(folder / "tokens.bin", 100)
    else:
        manifest.write_text('{"complete": tr')
    before = tok.encoded_docs
    np.testing.assert_array_equal(load_tokens(c, tok, "train", show_progress=False), good)
    assert tok.encoded_docs > before  # rebuilt, not trusted


def test_interrupted_append_is_cut_back_to_the_manifest(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    c, tok = cfg(tmp_path, path), ByteStandIn()
    good = np.array(load_tokens(c, tok, "train", show_progress=False))
    with open(cache_folder(c, tok, "train") / "tokens.bin", "ab") as f:
        f.write(b"\x07" * 50)
    before = tok.encoded_docs
    np.testing.assert_array_equal(load_tokens(c, tok, "train", show_progress=False), good)
    assert tok.encoded_docs == before


def test_streaming_tokenizes_only_what_is_needed_and_resumes(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    docs = list(iter_documents(str(path), "train"))
    full = packed(docs, ByteStandIn())
    c, tok = cfg(tmp_path, path, streaming=True), ByteStandIn()
    part = load_tokens(c, tok, "train", max_tokens=1000, show_progress=False)
    manifest = json.loads((cache_folder(c, tok, "train") / "manifest.json").read_text())
    assert len(part) == 1000 and not manifest["exhausted"] and manifest["num_docs"] < len(docs) / 2
    assert tok.encoded_docs == manifest["num_docs"]
    np.testing.assert_array_equal(part, full[:1000])
    more = load_tokens(c, tok, "train", max_tokens=4000, show_progress=False)
    np.testing.assert_array_equal(more, full[:4000])
    manifest2 = json.loads((cache_folder(c, tok, "train") / "manifest.json").read_text())
    assert tok.encoded_docs == manifest2["num_docs"]  # resumed: earlier documents were not re-encoded
    everything = load_tokens(c, tok, "train", show_progress=False)
    np.testing.assert_array_equal(everything, full)
    assert tok.encoded_docs == len(docs)


def test_cache_checksum_follows_appends_and_catches_flipped_tokens(tmp_path):
    from machinery.fileio import CHECKSUM, file_checksum
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    c, tok = cfg(tmp_path, path, streaming=True), ByteStandIn()
    load_tokens(c, tok, "train", max_tokens=1000, show_progress=False)
    good = np.array(load_tokens(c, tok, "train", max_tokens=4000, show_progress=False))  # appended
    folder = cache_folder(c, tok, "train")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest[CHECKSUM] == file_checksum(folder / "tokens.bin")  # extended, not recomputed from scratch
    data = bytearray((folder / "tokens.bin").read_bytes())
    data[10] ^= 1  # one flipped bit, still a valid token id
    (folder / "tokens.bin").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged"):
        np.testing.assert_array_equal(load_tokens(c, tok, "train", max_tokens=4000, show_progress=False), good)


def test_cache_from_before_checksums_gets_one(tmp_path):
    from machinery.fileio import CHECKSUM
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    c, tok = cfg(tmp_path, path), ByteStandIn()
    good = np.array(load_tokens(c, tok, "train", show_progress=False))
    manifest_path = cache_folder(c, tok, "train") / "manifest.json"
    old = json.loads(manifest_path.read_text())
    del old[CHECKSUM]
    manifest_path.write_text(json.dumps(old))
    before = tok.encoded_docs
    np.testing.assert_array_equal(load_tokens(c, tok, "train", show_progress=False), good)
    assert tok.encoded_docs == before and CHECKSUM in json.loads(manifest_path.read_text())


def test_vocabulary_checks(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    assert load_tokens(cfg(tmp_path, path), ByteStandIn(vocab_len=70_000), "train", show_progress=False).dtype == np.uint32
    with pytest.raises(ValueError, match="too large"):
        load_tokens(cfg(tmp_path, path), ByteStandIn(vocab_len=2**32 + 1), "train", show_progress=False)
    with pytest.raises(ValueError, match="bos_id=256"):
        load_tokens(cfg(tmp_path, path), ByteStandIn("tiny", vocab_len=200), "train", show_progress=False)
    broken = ByteStandIn("broken")
    broken.encode = lambda texts: [[999] for _ in texts]
    with pytest.raises(ValueError, match="id 999, outside its vocabulary"):
        load_tokens(cfg(tmp_path, path), broken, "train", show_progress=False)


# ---- batches ------------------------------------------------------------------------------------------
TOKENS = np.arange(1000, dtype=np.uint16)


def test_batch_shapes_and_shifted_targets():
    batch = next(TokenBatches(TOKENS, 4, 16, seed=0))
    assert batch.inputs.shape == batch.targets.shape == (4, 16) and batch.doc_ids is None
    assert batch.inputs.dtype == batch.targets.dtype == torch.int64
    assert torch.equal(batch.targets, batch.inputs + 1)  # arange: the next token is the id + 1
    assert batch.inputs.is_contiguous() and batch.targets.is_contiguous()


def test_random_sampling_is_seeded_and_ranks_differ():
    draw = lambda **kw: torch.cat([next(b).inputs for b in [TokenBatches(TOKENS, 8, 16, **kw)] for _ in range(3)])
    assert torch.equal(draw(seed=1), draw(seed=1))
    assert not torch.equal(draw(seed=1), draw(seed=2))
    assert not torch.equal(draw(seed=1, rank=0, world_size=2), draw(seed=1, rank=1, world_size=2))


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_ranks_together_see_the_single_process_batch(sampling):
    """n processes with batch b draw exactly the rows one process with batch n*b draws (same loss curve)."""
    single = TokenBatches(TOKENS, 8, 16, seed=3, sampling=sampling)
    ranks = [TokenBatches(TOKENS, 4, 16, seed=3, sampling=sampling, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        rows = next(single).inputs
        together = torch.cat([next(r).inputs for r in ranks])
        assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, together.tolist()))


def test_sequential_walks_windows_in_order_across_ranks():
    tokens = np.arange(41, dtype=np.uint16)  # 10 windows of 4 (+1 shared boundary token)
    firsts = lambda b: next(b).inputs[:, 0].tolist()
    one = TokenBatches(tokens, 3, 4, seed=0, sampling="sequential")
    assert [firsts(one) for _ in range(4)] == [[0, 4, 8], [12, 16, 20], [24, 28, 32], [36, 0, 4]]  # wraps
    r0, r1 = (TokenBatches(tokens, 2, 4, seed=0, sampling="sequential", rank=r, world_size=2) for r in (0, 1))
    assert firsts(r0) == [0, 8] and firsts(r1) == [4, 12]
    assert firsts(r0) == [16, 24] and firsts(r1) == [20, 28]


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_resumed_state_continues_the_same_stream(sampling):
    make = lambda: TokenBatches(TOKENS, 4, 16, seed=5, sampling=sampling, rank=1, world_size=2)
    batches = make()
    for _ in range(3):
        next(batches)
    state = json.loads(json.dumps(batches.state_dict()))  # survives JSON
    expected = [next(batches) for _ in range(4)]
    resumed = make()
    resumed.load_state_dict(state)
    for want, got in zip(expected, (next(resumed) for _ in range(4))):
        assert torch.equal(want.inputs, got.inputs) and torch.equal(want.targets, got.targets)
    with pytest.raises(ValueError, match="rank"):
        TokenBatches(TOKENS, 4, 16, seed=5, sampling=sampling, rank=0, world_size=2).load_state_dict(state)


def test_doc_ids_number_documents_from_bos_tokens():
    B, E = 9, 8  # bos, eos
    stream = np.array([B, 1, 2, E, B, 3, E, B, 4, 5, 6, E, B, 7], dtype=np.uint16)
    rows = np.stack([stream[0:8], stream[3:11]])
    np.testing.assert_array_equal(document_ids(rows, B), [[0, 0, 0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2, 2, 2]])
    batch = next(TokenBatches(stream, 2, 6, seed=0, sampling="sequential", doc_masking=True, bos_id=B))
    assert batch.doc_ids.dtype == torch.int32
    assert batch.doc_ids.tolist() == [[0, 0, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1]]


def test_bad_batch_settings():
    with pytest.raises(ValueError, match="fewer than seq_len"):
        TokenBatches(TOKENS[:16], 2, 16, seed=0)
    with pytest.raises(ValueError, match="bos_id"):
        TokenBatches(TOKENS, 2, 16, seed=0, doc_masking=True)
    with pytest.raises(ValueError, match="sampling"):
        TokenBatches(TOKENS, 2, 16, seed=0, sampling="shuffled")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_cuda():
    batch = next(TokenBatches(TOKENS, 4, 16, seed=0, device="cuda", doc_masking=True, bos_id=0))
    assert batch.inputs.is_cuda and batch.targets.is_cuda and batch.doc_ids.is_cuda
    assert torch.equal(batch.targets.cpu(), batch.inputs.cpu() + 1)


@pytest.mark.parametrize("where", ["the dataset", "a split file in a folder"])
def test_a_fifo_as_dataset_is_one_line_naming_it(tmp_path, where, monkeypatch, capsys):
    """Today a FIFO named .txt was called 'empty' and one inside a folder blocked the run forever."""
    import train
    if where == "the dataset":
        dataset = fifo = tmp_path / "stories.txt"
    else:
        dataset = tmp_path / "data"
        dataset.mkdir()
        fifo = dataset / "train.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"is a named pipe \(FIFO\), not a data file"):
        list(iter_documents(str(dataset), "train"))
    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(tmp_path / "trained"))
    assert train.main([f"--dataset={dataset}", f"--cache_dir={tmp_path / 'cache'}", "--dim=32", "--num_layers=1",
                       "--tokenizer=byte", "--max_iters=1", "--warmup_iters=0", "--device=cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{fifo} is a named pipe (FIFO)" in err and "Traceback" not in err
    assert not list((tmp_path / "trained").glob("*"))  # no run folder (nor lock file) left
