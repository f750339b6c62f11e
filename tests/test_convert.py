"""Tests for convert/owt_to_mds.py: sources, split, packing, output layout and errors."""

import gzip
import importlib.util
import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken

from convert import owt_to_mds
from convert.owt_to_mds import (
    EOT_ID,
    check_ids_fit_dtype,
    convert_to_mds,
    iter_tokenized_chunks,
    select_val_documents,
    thread_tokenizer,
    token_sample_writer,
    tokenize_chunk,
    write_splits,
)
from convert.text_sources import ConversionError, count_documents, iter_documents, resolve_sources

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 2357


@pytest.fixture(scope="module")
def encoding():
    return tiktoken.get_encoding("gpt2")


def make_texts(n: int) -> list[str]:
    """Return n distinct English documents of varying length."""
    texts = []
    for i in range(n):
        sentence = f"Document {i} tells how the {i % 5 + 1} brown foxes crossed river number {i * 7}. "
        texts.append(sentence * (1 + i % 4))
    return texts


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_owt_archive(path: Path, subsets: dict[str, dict[str, str]]) -> Path:
    """Write OpenWebText's layout: an outer tar of `.xz` members, each an xz tar of `.txt` files."""
    with tarfile.open(path, "w:xz" if path.name.endswith(".xz") else "w") as outer:
        for subset_name, documents in subsets.items():
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:xz") as inner:
                for document_name, text in documents.items():
                    add_member(inner, document_name, text.encode("utf-8"))
                add_member(inner, "notes.md", b"not a document")
            add_member(outer, f"openwebtext/{subset_name}", buffer.getvalue())
        add_member(outer, "openwebtext/README", b"not a subset")
    return path


def expected_val_indices(n: int, val_fraction: float, seed: int) -> set[int]:
    """The validation documents of datasets' train_test_split(test_size, seed, shuffle=True)."""
    permutation = np.random.default_rng(seed).permutation(n)
    return set(permutation[: math.ceil(val_fraction * n)].tolist())


def expected_streams(encoding, texts, val_indices) -> dict[str, list[int]]:
    streams = {"train": [], "val": []}
    for i, text in enumerate(texts):
        if text:
            split = "val" if i in val_indices else "train"
            streams[split] += encoding.encode_ordinary(text) + [EOT_ID]
    return streams


def read_samples(split_dir: Path) -> np.ndarray:
    from streaming import StreamingDataset

    dataset = StreamingDataset(local=str(split_dir), shuffle=False, batch_size=1)
    return np.stack([dataset[i]["tokens"] for i in range(dataset.num_samples)])


def join_samples(samples: np.ndarray) -> np.ndarray:
    """Rebuild the token stream from samples that overlap by one token."""
    return np.concatenate([samples[0], *(sample[1:] for sample in samples[1:])])


def convert(tmp_path: Path, inputs, **kwargs) -> dict:
    kwargs.setdefault("progress", False)
    return convert_to_mds([str(i) for i in inputs], str(tmp_path / "out"), **kwargs)


def output_files(out_root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(out_root).as_posix(): path.read_bytes()
        for path in sorted(out_root.rglob("*"))
        if path.is_file()
    }


# Tokenizing and packing


def test_tokenize_chunk_literal_endoftext(encoding):
    text = "Before <|endoftext|> after"
    tokens, lengths = tokenize_chunk([text, "", "x"])
    expected = encoding.encode_ordinary(text) + [EOT_ID] + encoding.encode_ordinary("x") + [EOT_ID]
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == expected
    assert lengths.tolist() == [len(encoding.encode_ordinary(text)) + 1, 0, 2]
    assert int(np.count_nonzero(tokens == EOT_ID)) == 2


@pytest.mark.parametrize("texts", [
    # Whitespace at the edges of texts, and an empty text between them.
    ["ends with spaces   ", "", "\n\nstarts with newlines", "x", "y\n", " z"],
    # Partial markers at the edges of a text stay ordinary text.
    ["ends with <|endoftext", "|> starts the next", "<|", "endoftext|>"],
    # A lone surrogate: tiktoken's encode_ordinary repairs it, and so must the chunk.
    ["before \ud800 after", "plain"],
])
def test_chunk_matches_encode_ordinary(encoding, texts):
    tokens, lengths = tokenize_chunk(texts)
    expected, expected_lengths = [], []
    for text in texts:
        ids = encoding.encode_ordinary(text) + [EOT_ID] if text else []
        expected += ids
        expected_lengths.append(len(ids))
    assert tokens.tolist() == expected
    assert lengths.tolist() == expected_lengths


def test_round_trip_jsonl_tokens(tmp_path, encoding):
    texts = make_texts(40)
    texts[5] = ""
    source = write_jsonl(tmp_path / "docs.jsonl", texts)
    seq_len = 16

    stats = convert(tmp_path, [source], seq_len=seq_len, val_fraction=0.1)

    streams = expected_streams(encoding, texts, expected_val_indices(40, 0.1, SEED))
    for split in ("train", "val"):
        samples = read_samples(tmp_path / "out" / split)
        counts = stats["splits"][split]
        assert samples.dtype == np.uint16
        assert samples.shape == (counts["samples"], seq_len + 1)
        kept_tokens = counts["samples"] * seq_len + 1
        assert join_samples(samples).tolist() == streams[split][:kept_tokens]
        assert counts["tokens"] == len(streams[split])
        assert counts["dropped_tokens"] == len(streams[split]) - kept_tokens


def test_samples_overlap_by_one_token(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(30))
    stats = convert(tmp_path, [source], seq_len=8)
    samples = read_samples(tmp_path / "out" / "train")
    assert stats["splits"]["train"]["samples"] == len(samples) > 2
    for previous, current in zip(samples, samples[1:]):
        assert previous[-1] == current[0]


def test_eot_count_equals_documents(tmp_path):
    texts = make_texts(12) + ["", "A <|endoftext|> inside the text."]
    source = write_jsonl(tmp_path / "docs.jsonl", texts)
    # With seq_len 1 no token is dropped, so the output contains every EOT.
    stats = convert(tmp_path, [source], seq_len=1, val_fraction=0.2)

    for split in ("train", "val"):
        counts = stats["splits"][split]
        stream = join_samples(read_samples(tmp_path / "out" / split))
        assert counts["dropped_tokens"] == 0
        assert len(stream) == counts["tokens"]
        assert int(np.count_nonzero(stream == EOT_ID)) == counts["documents"]
    total = stats["splits"]["train"]["documents"] + stats["splits"]["val"]["documents"]
    assert total == 13
    empty = stats["splits"]["train"]["empty_documents"] + stats["splits"]["val"]["empty_documents"]
    assert empty == 1


def test_literal_endoftext_not_eot(tmp_path, encoding):
    text = "Models end a document with <|endoftext|> and begin the next."
    source = write_jsonl(tmp_path / "docs.jsonl", [text] * 3)
    stats = convert(tmp_path, [source], seq_len=1)

    stream = join_samples(read_samples(tmp_path / "out" / "train"))
    assert stats["splits"]["train"]["documents"] == 2
    assert stream.tolist() == (encoding.encode_ordinary(text) + [EOT_ID]) * 2
    assert int(np.count_nonzero(stream == EOT_ID)) == 2


def test_each_thread_gets_its_own_encoding(encoding):
    text = "Threads share no regex: <|endoftext|> \ud800 stays ordinary text."
    with ThreadPoolExecutor(max_workers=2) as pool:
        barrier = threading.Barrier(2)  # both threads alive at once, so they are two threads

        def encode_in_thread(_):
            barrier.wait()
            own = thread_tokenizer()
            assert thread_tokenizer() is own  # built once per thread
            return own, own.encode_ordinary(text)

        (first, first_ids), (second, second_ids) = pool.map(encode_in_thread, range(2))
    assert first is not second
    assert encoding not in (first, second)
    assert first_ids == second_ids == encoding.encode_ordinary(text)
    assert first.eot_token == EOT_ID
    assert first.n_vocab == encoding.n_vocab


def test_token_writer_matches_mdswriter_bytes(tmp_path):
    from streaming import MDSWriter

    columns = {"tokens": "ndarray:uint16:9"}
    samples = np.random.default_rng(0).integers(0, 50257, size=(300, 9)).astype(np.uint16)
    for name, writer_class in (("stock", MDSWriter), ("fast", token_sample_writer(MDSWriter))):
        with writer_class(out=str(tmp_path / name), columns=columns, compression=None, size_limit=1 << 12) as writer:
            for sample in samples:
                writer.write({"tokens": sample})
    stock, fast = output_files(tmp_path / "stock"), output_files(tmp_path / "fast")
    assert len(stock) > 2  # several shards and the index
    assert stock == fast


def test_token_sample_writer_rejects_wrong_length(tmp_path):
    from streaming import MDSWriter

    with token_sample_writer(MDSWriter)(out=str(tmp_path / "out"), columns={"tokens": "ndarray:uint16:9"},
                                        compression=None) as writer:
        with pytest.raises(ValueError, match="a sample of 16 bytes for column 'tokens' of 18 bytes"):
            writer.write({"tokens": np.zeros(8, dtype=np.uint16)})
        writer.write({"tokens": np.zeros(9, dtype=np.uint16)})


def test_workers_identical_bytes(tmp_path, monkeypatch):
    # Small chunks put many chunks in flight at once in the 2-worker run.
    monkeypatch.setattr(owt_to_mds, "DOCS_PER_CHUNK", 4)
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(300))
    outputs = {}
    for workers in (1, 2):
        out_root = tmp_path / f"out{workers}"
        convert_to_mds([str(source)], str(out_root), seq_len=32, workers=workers,
                       val_fraction=0.05, progress=False)
        outputs[workers] = output_files(out_root)

    assert "stats.json" in outputs[1]
    assert "train/shard.00000.mds" in outputs[1]
    assert "val/shard.00000.mds" in outputs[1]
    assert sorted(outputs[1]) == sorted(outputs[2])
    for name in outputs[1]:
        assert outputs[1][name] == outputs[2][name], name


def test_workers_read_input_lazily(monkeypatch):
    monkeypatch.setattr(owt_to_mds, "DOCS_PER_CHUNK", 1)
    pulled = []

    def documents():
        for i, text in enumerate(make_texts(100)):
            pulled.append(i)
            yield text

    chunks = iter_tokenized_chunks(documents(), workers=2)
    next(chunks)
    window = 2 * owt_to_mds.CHUNKS_IN_FLIGHT_PER_WORKER
    assert len(pulled) <= window
    assert sum(1 for _ in chunks) == 99


@pytest.mark.parametrize(("n_counted", "message"), [(2, "then read more"), (4, "then read 3")])
def test_inputs_changed_between_passes(tmp_path, n_counted, message):
    is_val = np.zeros(n_counted, dtype=bool)
    with pytest.raises(ConversionError, match=f"counted {n_counted} documents in the first pass, {message}"):
        write_splits(iter(["a", "b", "c"]), is_val, tmp_path, seq_len=4, workers=1, progress=False)


def test_rerun_identical_bytes(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(20))
    convert(tmp_path, [source], seq_len=16)
    first = output_files(tmp_path / "out")
    convert(tmp_path, [source], seq_len=16, overwrite=True)
    assert output_files(tmp_path / "out") == first


# Train/val split


@pytest.mark.parametrize(
    ("n_documents", "val_fraction", "n_val"),
    [(3, 0.0005, 1), (1001, 0.0005, 1), (5000, 0.0005, 3), (95, 0.1, 10), (8013769, 0.0005, 4007)],
)
def test_val_size_is_ceil(n_documents, val_fraction, n_val):
    is_val = select_val_documents(n_documents, val_fraction, SEED)
    assert is_val.dtype == np.bool_
    assert is_val.shape == (n_documents,)
    assert int(is_val.sum()) == n_val
    assert set(np.flatnonzero(is_val).tolist()) == expected_val_indices(n_documents, val_fraction, SEED)


def test_split_depends_on_seed():
    first = select_val_documents(1000, 0.05, SEED)
    again = select_val_documents(1000, 0.05, SEED)
    other = select_val_documents(1000, 0.05, SEED + 1)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_split_matches_datasets():
    datasets = pytest.importorskip("datasets")
    n = 4000
    table = datasets.Dataset.from_dict({"index": list(range(n))})
    split = table.train_test_split(test_size=0.0005, seed=SEED, shuffle=True)
    is_val = select_val_documents(n, 0.0005, SEED)
    assert sorted(split["test"]["index"]) == np.flatnonzero(is_val).tolist()


def test_three_documents_one_val(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(3))
    stats = convert(tmp_path, [source], seq_len=4)
    assert stats["splits"]["val"]["documents"] == 1
    assert stats["splits"]["train"]["documents"] == 2


def test_split_rejects_too_few_documents():
    with pytest.raises(ConversionError, match=r"cannot split 1 document\(s\): val_fraction 0.0005 puts 1 in val"):
        select_val_documents(1, 0.0005, SEED)
    with pytest.raises(ConversionError, match="no documents"):
        select_val_documents(0, 0.0005, SEED)


def test_max_documents_limits_input(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(10))
    stats = convert(tmp_path, [source], seq_len=4, max_documents=4)
    documents = stats["splits"]["train"]["documents"] + stats["splits"]["val"]["documents"]
    assert documents == 4
    assert stats["max_documents"] == 4


# Sources


def test_source_txt_strips_bom(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(b"\xef\xbb\xbfIt was a bright cold day.\r\n")
    assert list(iter_documents(resolve_sources([str(path)]))) == ["It was a bright cold day.\r\n"]


def test_source_folder_sorted_recursive(tmp_path):
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    (root / "b" / "two.txt").write_text("two")
    (root / "a.txt").write_text("one")
    write_jsonl(root / "c.jsonl", ["three", "four"])
    (root / "README").write_text("not a document")
    (root / "MANIFEST.tsv").write_text("name\tbytes\n")

    sources = resolve_sources([str(root)])
    assert [Path(s.location).name for s in sources] == ["a.txt", "two.txt", "c.jsonl"]
    assert list(iter_documents(sources)) == ["one", "two", "three", "four"]
    assert count_documents(sources) == 4


def test_source_folder_converts(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i, text in enumerate(make_texts(5)):
        (root / f"doc{i}.txt").write_text(text)
    stats = convert(tmp_path, [root], seq_len=8)
    assert stats["splits"]["train"]["documents"] == 4
    assert stats["splits"]["val"]["documents"] == 1
    assert stats["sources"] == [str(root)]


def test_source_jsonl_gz(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"text": "Caf\\u00e9 first."}\n\n{"text": "second"}\n')
    assert list(iter_documents(resolve_sources([str(path)]))) == ["Café first.", "second"]


def test_source_parquet_batches(tmp_path, monkeypatch):
    monkeypatch.setattr("convert.text_sources.PARQUET_BATCH_ROWS", 2)
    texts = make_texts(7)
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": list(range(7)), "text": texts}), path, row_group_size=3)
    sources = resolve_sources([str(path)])
    assert list(iter_documents(sources)) == texts
    assert count_documents(sources) == 7
    assert count_documents(sources, limit=5) == 5


@pytest.mark.parametrize("archive_name", ["openwebtext.tar", "openwebtext.tar.xz"])
def test_source_owt_archive(tmp_path, archive_name):
    path = build_owt_archive(tmp_path / archive_name, {
        "urlsf_subset00-1_data.xz": {"0001.txt": "First page.\n\n\n\nSecond paragraph.\n", "0002.txt": "Two"},
        "urlsf_subset00-2_data.xz": {"0003.txt": "  Three  "},
    })
    sources = resolve_sources([str(path)])
    documents = list(iter_documents(sources))
    assert documents == ["First page.\n\nSecond paragraph.", "Two", "Three"]
    assert count_documents(sources) == 3


def test_source_owt_archive_converts(tmp_path, encoding):
    texts = make_texts(6)
    path = build_owt_archive(tmp_path / "openwebtext.tar.xz", {
        "urlsf_subset00-1_data.xz": {f"{i:04d}.txt": t for i, t in enumerate(texts[:4])},
        "urlsf_subset01-1_data.xz": {f"{i:04d}.txt": t for i, t in enumerate(texts[4:], 4)},
    })
    stats = convert(tmp_path, [path], seq_len=1)
    streams = expected_streams(encoding, [t.strip() for t in texts], expected_val_indices(6, 0.0005, SEED))
    assert join_samples(read_samples(tmp_path / "out" / "train")).tolist() == streams["train"]
    assert stats["splits"]["train"]["documents"] == 5


def test_source_hf_needs_datasets(tmp_path):
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed, so the missing-package error cannot occur")
    with pytest.raises(ConversionError, match=r"hf:Skylion007/openwebtext needs .*pip install -e '\.\[hub\]'"):
        convert(tmp_path, ["hf:Skylion007/openwebtext"])
    assert not (tmp_path / "out").exists()


def test_source_pydoc_topics(tmp_path):
    from pydoc_data.topics import topics

    stats = convert(tmp_path, ["builtin:pydoc-topics"], seq_len=1024)
    splits = stats["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == len(topics)
    assert splits["val"]["documents"] == 1
    first = next(iter(iter_documents(resolve_sources(["builtin:pydoc-topics"]))))
    assert first == topics[sorted(topics)[0]]
    if sys.version_info[:3] == (3, 11, 7):
        # The counts in owt_to_mds.py's docstring.
        assert len(topics) == 79
        assert splits["train"]["tokens"] == 136583
        assert splits["val"]["tokens"] == 2433


# stats.json


def test_stats_json_layout(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(25) + [""])
    stats = convert(tmp_path, [source], seq_len=16, val_fraction=0.1, seed=7)
    on_disk = json.loads((tmp_path / "out" / "stats.json").read_text())

    assert on_disk == stats
    assert {k: v for k, v in stats.items() if k != "splits"} == {
        "format_version": 1,
        "tokenizer": "tiktoken:gpt2",
        "vocab_size": 50257,
        "eot_id": 50256,
        "dtype": "uint16",
        "column": "tokens",
        "seq_len": 16,
        "sample_len": 17,
        "sources": [str(source)],
        "val_fraction": 0.1,
        "seed": 7,
        "max_documents": None,
    }
    documents = 0
    for split in ("train", "val"):
        counts = stats["splits"][split]
        assert sorted(counts) == ["documents", "dropped_tokens", "empty_documents", "samples", "tokens"]
        assert counts["samples"] > 0
        assert counts["samples"] * 16 + 1 + counts["dropped_tokens"] == counts["tokens"]
        assert 0 <= counts["dropped_tokens"] < 16
        documents += counts["documents"] + counts["empty_documents"]
    assert documents == 26
    assert stats["splits"]["val"]["documents"] + stats["splits"]["val"]["empty_documents"] == 3


def test_mds_index_dtype(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(10))
    convert(tmp_path, [source], seq_len=16)
    index = json.loads((tmp_path / "out" / "train" / "index.json").read_text())
    shard = index["shards"][0]
    assert shard["column_names"] == ["tokens"]
    assert shard["column_encodings"] == ["ndarray:uint16:17"]
    assert shard["compression"] is None


# Errors


def assert_no_output(out_root: Path) -> None:
    assert not (out_root / "stats.json").exists()
    assert not (out_root / "train").exists()
    assert not (out_root / "val").exists()
    assert list(out_root.glob(".incomplete-*")) == []


def test_error_missing_input(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ConversionError, match="input not found: .*nope.jsonl"):
        convert(tmp_path, [missing])
    assert not (tmp_path / "out").exists()


def test_error_unknown_inputs(tmp_path):
    other = tmp_path / "notes.md"
    other.write_text("text")
    with pytest.raises(ConversionError, match=r"notes\.md has an unsupported file type"):
        resolve_sources([str(other)])
    with pytest.raises(ConversionError, match="unknown built-in source 'builtin:nope'.*builtin:pydoc-topics"):
        resolve_sources(["builtin:nope"])


def test_error_non_utf8_txt(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 ok".encode("latin-1"))
    with pytest.raises(ConversionError, match=r"latin1\.txt is not valid UTF-8.*byte offset 3.*Re-encode"):
        convert(tmp_path, [path, path])
    assert_no_output(tmp_path / "out")


def test_error_non_utf8_txt_after_bom(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfab\xff")
    with pytest.raises(ConversionError, match="byte offset 5"):
        list(iter_documents(resolve_sources([str(path)])))


def test_error_truncated_archive(tmp_path):
    path = build_owt_archive(tmp_path / "openwebtext.tar.xz", {
        "urlsf_subset00-1_data.xz": {f"{i:04d}.txt": t for i, t in enumerate(make_texts(50))},
    })
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ConversionError, match=r"cannot read archive .*openwebtext\.tar\.xz.*truncated"):
        convert(tmp_path, [path])
    assert_no_output(tmp_path / "out")


def test_error_bad_jsonl_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(ConversionError, match=r"docs\.jsonl, line 2: invalid JSON.*oops"):
        convert(tmp_path, [path])
    assert_no_output(tmp_path / "out")


def test_error_jsonl_without_text(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "x", "id": 3}\n')
    with pytest.raises(ConversionError, match=r"docs\.jsonl, line 2: no 'text' key; keys found: \['body', 'id'\]"):
        convert(tmp_path, [path])
    path.write_text('{"text": 5}\n')
    with pytest.raises(ConversionError, match=r"line 1: 'text' must be a string, found int"):
        convert(tmp_path, [path])
    path.write_text('["text"]\n')
    with pytest.raises(ConversionError, match=r"line 1: expected a JSON object.*found a JSON list"):
        convert(tmp_path, [path])


def test_error_parquet_without_text(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [1], "content": ["x"]}), path)
    with pytest.raises(ConversionError, match=r"docs\.parquet has no 'text' column; columns found: \['id', 'content'\]"):
        convert(tmp_path, [path])
    assert not (tmp_path / "out").exists()


def test_error_parquet_null_cleans_up(tmp_path):
    # Parquet rows are counted from metadata, so this error comes while shards are written.
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": make_texts(5) + [None]}), path)
    with pytest.raises(ConversionError, match=r"docs\.parquet, row 5: 'text' is null"):
        convert(tmp_path, [path], seq_len=4)
    assert (tmp_path / "out").is_dir()
    assert_no_output(tmp_path / "out")


def test_error_empty_folder(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "README").write_text("no documents here")
    with pytest.raises(ConversionError, match=r"input folder .*corpus contains no usable files"):
        convert(tmp_path, [folder])


def test_error_unwritable_output(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out_root = blocker / "out"
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(3))
    with pytest.raises(ConversionError, match=r"cannot write to output folder .*a_file/out"):
        convert_to_mds([str(source)], str(out_root), progress=False)


def test_error_existing_output(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(5))
    convert(tmp_path, [source], seq_len=4)
    out_root = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"output folder .*out already contains stats\.json, train, val; pass --overwrite"):
        convert(tmp_path, [source], seq_len=8)
    assert json.loads((out_root / "stats.json").read_text())["seq_len"] == 4

    stats = convert(tmp_path, [source], seq_len=8, overwrite=True)
    assert stats["seq_len"] == 8
    assert json.loads((out_root / "stats.json").read_text())["seq_len"] == 8


def test_publish_leftovers_replaced(tmp_path):
    # A run killed between moving train/ and val/ into place leaves them without stats.json.
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(5))
    expected = convert(tmp_path, [source], seq_len=4)
    out_root = tmp_path / "out"
    (out_root / "stats.json").unlink()
    shutil.rmtree(out_root / "val")
    stats = convert(tmp_path, [source], seq_len=4)
    assert stats == expected
    assert sorted(p.name for p in out_root.iterdir()) == ["stats.json", "train", "val"]


def test_stale_staging_removed(tmp_path):
    stale = tmp_path / "out" / ".incomplete-999999"
    (stale / "train").mkdir(parents=True)
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(5))
    convert(tmp_path, [source], seq_len=4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stats.json", "train", "val"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 0}, "seq_len must be at least 1, got 0"),
        ({"workers": 0}, "workers must be at least 1, got 0"),
        ({"val_fraction": 0.0}, "val_fraction must be between 0 and 1 .*got 0.0"),
        ({"val_fraction": 1.0}, "val_fraction must be between 0 and 1 .*got 1.0"),
        ({"max_documents": 0}, "max_documents must be at least 1, got 0"),
    ],
)
def test_error_invalid_arguments(tmp_path, kwargs, message):
    with pytest.raises(ConversionError, match=message):
        convert(tmp_path, ["builtin:pydoc-topics"], **kwargs)


def test_vocab_must_fit_uint16():
    check_ids_fit_dtype(50256, np.uint16)
    check_ids_fit_dtype(65535, np.uint16)
    with pytest.raises(ConversionError, match="max token id 100276 does not fit in uint16"):
        check_ids_fit_dtype(100276, np.uint16)


# Command line


def test_cli_summary_and_error(tmp_path, capsys):
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(8))
    out_root = tmp_path / "out"
    argv = ["--input", str(source), "--out-root", str(out_root), "--seq-len", "8"]
    assert owt_to_mds.main(argv) == 0
    stdout = capsys.readouterr().out
    stats = json.loads((out_root / "stats.json").read_text())
    train = stats["splits"]["train"]
    assert f"train  {train['documents']:>10,} {train['tokens']:>14,} {train['samples']:>11,}" in stdout
    assert f"wrote {out_root}" in stdout

    assert owt_to_mds.main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_cli_script_with_workers(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", make_texts(20))
    out_root = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "convert/owt_to_mds.py", "--input", str(source), "--out-root", str(out_root),
         "--seq-len", "16", "--workers", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout
    assert json.loads((out_root / "stats.json").read_text())["seq_len"] == 16


def test_warns_when_val_takes_large_share(tmp_path, caplog):
    # Two documents: ceil(0.0005 * 2) = 1 goes to val, whichever it is, about half the tokens.
    source = write_jsonl(tmp_path / "two.jsonl", make_texts(2))
    with caplog.at_level("WARNING", logger="convert.owt_to_mds"):
        stats = convert(tmp_path, [source], seq_len=8)
    share = stats["splits"]["val"]["tokens"] / (stats["splits"]["val"]["tokens"] + stats["splits"]["train"]["tokens"])
    assert share > 0.1
    assert f"val split contains {100 * share:.0f}% of the tokens (1 of 2 documents, val_fraction 0.0005)" in caplog.text


def test_no_val_share_warning_for_many_documents(tmp_path, caplog):
    source = write_jsonl(tmp_path / "many.jsonl", make_texts(100))
    with caplog.at_level("WARNING", logger="convert.owt_to_mds"):
        convert(tmp_path, [source], seq_len=8)
    assert "val split contains" not in caplog.text
