"""Tokenize OpenWebText (or other text) with GPT-2's BPE and write MDS shards for Streaming.

    python convert/owt_to_mds.py --input builtin:pydoc-topics --out-root data/pydoc --seq-len 256
    python convert/owt_to_mds.py --input openwebtext.tar.xz --out-root data/owt --workers 16

One input record, a JSONL line `{"text": "Hello world"}`, becomes the tokens
`[15496, 995, 50256]`: `encode_ordinary` ids followed by the end-of-text id 50256.
Text that contains the literal string "<|endoftext|>" is encoded as ordinary text.

Steps:
1. Count the documents (n) and pick the validation documents the way nanoGPT's
   `train_test_split(test_size=val_fraction, seed=seed)` does: the first
   ceil(val_fraction * n) indices of `np.random.default_rng(seed).permutation(n)`.
   Both splits keep the input order of their documents. Empty documents take part in
   the split and are then skipped.
   NOTE: the validation documents equal nanoGPT's only if the inputs yield the documents
   in the order of the hub dataset. hf:Skylion007/openwebtext does; the member order of
   the original openwebtext.tar.xz has not been compared with it.
2. Tokenize chunks of documents in `workers` threads and concatenate each split's tokens.
   tiktoken's BPE runs without the GIL, so threads tokenize in parallel, as in tiktoken's own
   `encode_ordinary_batch`, and nothing is pickled between processes.
3. Cut each split's stream into samples of seq_len + 1 tokens, where sample k is
   stream[k * seq_len : k * seq_len + seq_len + 1]. Consecutive samples share one token,
   so with inputs sample[:-1] and targets sample[1:], every kept token after the first is
   a target exactly once. The tokens after the last full sample are dropped.

Expected counts for `--input builtin:pydoc-topics --seq-len 1024` (the 79 topics of
CPython 3.11.7; other versions differ):

    split  documents  tokens   samples  dropped_tokens
    train  78         136,583  133      390             133 * 1024 + 1 + 390 = 136,583
    val    1          2,433    2        384

Output layout (`stats.json` is written last, so its presence marks a complete output):

    OUT_ROOT/train/index.json, shard.00000.mds, ...   column "tokens": ndarray:uint16:seq_len+1
    OUT_ROOT/val/...
    OUT_ROOT/stats.json                               counts per split, see `build_stats`
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tiktoken
from tqdm import tqdm

if TYPE_CHECKING:
    from streaming import MDSWriter

if __package__ in (None, ""):
    # Run as `python convert/owt_to_mds.py`: make the `convert` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convert.text_sources import (  # noqa: E402
    ConversionError,
    count_documents,
    iter_documents,
    resolve_sources,
)

logger = logging.getLogger(__name__)

STATS_FORMAT_VERSION = 1
TOKENIZER = "gpt2"
EOT_ID = 50256
TOKEN_DTYPE = np.uint16
COLUMN = "tokens"
SPLITS = ("train", "val")
STAGING_PREFIX = ".incomplete-"

# A chunk is the unit of work given to a tokenizer thread: large enough that the Python
# around each call costs little next to BPE, small enough that a few chunks per worker
# bound the memory.
DOCS_PER_CHUNK = 256
CHARS_PER_CHUNK = 1 << 20
CHUNKS_IN_FLIGHT_PER_WORKER = 4


def convert_to_mds(
    inputs: list[str],
    out_root: str,
    seq_len: int = 1024,
    workers: int = 1,
    val_fraction: float = 0.0005,
    seed: int = 2357,
    overwrite: bool = False,
    max_documents: int | None = None,
    progress: bool = True,
) -> dict:
    """Tokenize the documents of `inputs` and write train and val MDS datasets to `out_root`.

    Args:
        inputs: sources as accepted by `text_sources.resolve_sources` (files, folders,
            `builtin:pydoc-topics`, `hf:NAME`), read in the order given.
        out_root: folder that receives `train/`, `val/` and `stats.json`.
        seq_len: model context length T; each sample stores T + 1 tokens.
        workers: tokenizer threads. The output bytes do not depend on it.
        val_fraction: share of documents for validation, rounded up to whole documents.
        seed: seed of the document permutation that picks the validation documents.
        overwrite: replace an existing output in `out_root` instead of raising.
        max_documents: read only the first `max_documents` documents of the inputs,
            empty ones included.
        progress: show tqdm progress bars on stderr.

    Returns:
        The content of `stats.json`.

    Raises:
        ConversionError: an invalid argument, input or output folder. After any error the
            staging folder is removed. An earlier output in `out_root` stays as it was,
            unless the error comes while the new output is moved into place.
    """
    _check_arguments(seq_len, workers, val_fraction, max_documents)
    encoding = get_tokenizer()
    sources = resolve_sources(inputs)
    out_path = Path(out_root)
    staging = prepare_output(out_path, overwrite)
    start_importing_mds_writer()  # runs while the documents are counted and the first ones tokenized
    try:
        n_documents = count_documents(sources, max_documents, progress)
        is_val = select_val_documents(n_documents, val_fraction, seed)
        documents = iter_documents(sources, max_documents)
        split_stats = write_splits(documents, is_val, staging, seq_len, workers, progress)
        stats = build_stats(encoding, inputs, seq_len, val_fraction, seed, max_documents, split_stats)
        publish_output(staging, out_path, stats)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if split_stats["val"]["samples"] == 0:
        logger.warning(
            "val split has no samples: its %d tokens do not fill one sample of %d tokens. "
            "Raise --val-fraction or lower --seq-len.",
            split_stats["val"]["tokens"], seq_len + 1,
        )
    total_tokens = split_stats["train"]["tokens"] + split_stats["val"]["tokens"]
    val_share = split_stats["val"]["tokens"] / max(total_tokens, 1)
    # Whole documents go to val, so with few documents one long one can take most of the text.
    if val_share > max(0.1, 2 * val_fraction):
        logger.warning(
            "val split contains %.0f%% of the tokens (%d of %d documents, val_fraction %g), so training sees "
            "only %.0f%%. Add documents, for example by splitting long texts into several files.",
            100 * val_share, split_stats["val"]["documents"], n_documents, val_fraction, 100 * (1 - val_share),
        )
    return stats


def _check_arguments(seq_len: int, workers: int, val_fraction: float, max_documents: int | None):
    if seq_len < 1:
        raise ConversionError(f"seq_len must be at least 1, got {seq_len}")
    if workers < 1:
        raise ConversionError(f"workers must be at least 1, got {workers}")
    if not 0.0 < val_fraction < 1.0:
        raise ConversionError(
            f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}"
        )
    if max_documents is not None and max_documents < 1:
        raise ConversionError(f"max_documents must be at least 1, got {max_documents}")


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """Load GPT-2's tiktoken encoding once per process and check that its ids fit the dtype."""
    try:
        encoding = tiktoken.get_encoding(TOKENIZER)
    except OSError as err:  # tiktoken downloads with requests, whose errors subclass OSError
        raise ConversionError(
            f"cannot load the tiktoken {TOKENIZER!r} vocabulary ({err}). Offline, set "
            "TIKTOKEN_CACHE_DIR to a folder with tiktoken's cached GPT-2 files, named by the SHA-1 of their URLs: "
            "6d1cbeee0f20b3d9449abfede4726ed8212e3aee (vocab.bpe) and 6c7ea1a7e38e3a7f062df639a5b80947f075ffe6 "
            "(encoder.json)."
        ) from err
    check_ids_fit_dtype(encoding.max_token_value, TOKEN_DTYPE)
    assert encoding.eot_token == EOT_ID, encoding.eot_token
    return encoding


_thread_state = threading.local()


def thread_tokenizer() -> tiktoken.Encoding:
    """Return this thread's own GPT-2 encoding, built from `get_tokenizer`'s on first use.

    Each takes 20 to 40 ms and about 10 MiB to build, so 32 workers hold about 330 MiB of them.

    Threads that share one Encoding also share its regex's scratch-space pools. With two workers
    sharing one, each token cost twice the CPU time of one worker alone. perf put the extra time in
    regex_automata's pool (`Pool::get_slow`, `put_value`). Measured in memory on the corpora (30M
    characters x 4): shared, 1 worker 5.3M tokens/s, 2 workers 4.5M (14.4 s of CPU against 6.1 s);
    one encoding per thread, 2 workers 10.4M (6.2 s of CPU).
    """
    encoding = getattr(_thread_state, "encoding", None)
    if encoding is None:
        shared = get_tokenizer()
        # tiktoken offers no public copy of an Encoding; these are the arguments it was built from.
        encoding = tiktoken.Encoding(
            shared.name,
            pat_str=shared._pat_str,
            mergeable_ranks=shared._mergeable_ranks,
            special_tokens=shared._special_tokens,
        )
        _thread_state.encoding = encoding
    return encoding


def check_ids_fit_dtype(max_token_id: int, dtype: type[np.integer]) -> None:
    """Raise ConversionError if token ids up to `max_token_id` do not fit in `dtype`."""
    max_value = np.iinfo(dtype).max
    if max_token_id > max_value:
        raise ConversionError(
            f"the vocabulary's max token id {max_token_id} does not fit in "
            f"{np.dtype(dtype).name} (max {max_value}); this writer stores tokens as "
            f"{np.dtype(dtype).name} and supports only vocabularies up to {max_value + 1} ids"
        )


def select_val_documents(n_documents: int, val_fraction: float, seed: int) -> np.ndarray:
    """Return a bool mask over the documents that is True for the validation documents.

    Matches `datasets.Dataset.train_test_split(test_size=val_fraction, seed=seed)`, which
    nanoGPT uses for OpenWebText: ceil(val_fraction * n) documents, taken from the front of
    `np.random.default_rng(seed).permutation(n)`.
    """
    if n_documents == 0:
        raise ConversionError("the inputs contain no documents")
    n_val = math.ceil(val_fraction * n_documents)
    if n_val >= n_documents:
        raise ConversionError(
            f"cannot split {n_documents} document(s): val_fraction {val_fraction} puts {n_val} "
            "in val and leaves none for train. Add documents, for example by splitting one long text into several files."
        )
    permutation = np.random.default_rng(seed).permutation(n_documents)
    is_val = np.zeros(n_documents, dtype=bool)
    is_val[permutation[:n_val]] = True
    return is_val


def prepare_output(out_root: Path, overwrite: bool) -> Path:
    """Create `out_root` and an empty staging folder inside it, and return the staging folder.

    Raises ConversionError if `out_root` already contains an output and `overwrite` is False,
    or if it cannot be created or written.
    """
    existing = [name for name in ("stats.json", *SPLITS) if (out_root / name).exists()]
    # Without stats.json, train/ or val/ are what a run killed while publishing left; the rerun replaces them.
    if "stats.json" in existing and not overwrite:
        raise ConversionError(
            f"output folder {out_root} already contains {', '.join(existing)}; "
            "pass --overwrite (overwrite=True) to replace it"
        )
    if existing and "stats.json" not in existing:
        logger.warning("replacing %s in %s: there is no stats.json, so they are incomplete",
                       " and ".join(existing), out_root)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        # Staging folders of runs that were killed. NOTE: this also removes the staging
        # folder of a run still writing to the same out_root; run one conversion at a time.
        for stale in out_root.glob(STAGING_PREFIX + "*"):
            logger.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale)
        staging = out_root / f"{STAGING_PREFIX}{os.getpid()}"
        staging.mkdir()
    except OSError as err:
        raise ConversionError(
            f"cannot write to output folder {out_root}: {err.strerror or err}. "
            "Choose a writable --out-root."
        ) from err
    return staging


def publish_output(staging: Path, out_root: Path, stats: dict) -> None:
    """Move the finished splits from `staging` into `out_root`, then write `stats.json`."""
    stats_path = out_root / "stats.json"
    # Remove the old stats.json first: a crash below then leaves no output that looks complete.
    stats_path.unlink(missing_ok=True)
    for split in SPLITS:
        target = out_root / split
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / split, target)
    staged_stats = staging / "stats.json"
    staged_stats.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    os.replace(staged_stats, stats_path)


def build_stats(
    encoding: tiktoken.Encoding,
    inputs: list[str],
    seq_len: int,
    val_fraction: float,
    seed: int,
    max_documents: int | None,
    split_stats: dict[str, dict[str, int]],
) -> dict:
    """Return the `stats.json` content. It contains no timestamps and no paths except `inputs`."""
    return {
        "format_version": STATS_FORMAT_VERSION,
        "tokenizer": f"tiktoken:{TOKENIZER}",
        "vocab_size": encoding.n_vocab,
        "eot_id": EOT_ID,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "column": COLUMN,
        "seq_len": seq_len,
        "sample_len": seq_len + 1,
        "sources": list(inputs),
        "val_fraction": val_fraction,
        "seed": seed,
        "max_documents": max_documents,
        "splits": split_stats,
    }


class SplitWriter:
    """Pack one split's documents into overlapping samples and write them to an MDS writer.

    Keeps the tokens after the last written sample, starting with that sample's last token,
    which is also the first token of the next sample.
    """

    def __init__(self, writer: MDSWriter, seq_len: int):
        self.writer = writer
        self.seq_len = seq_len
        self.pending = np.empty(0, dtype=TOKEN_DTYPE)
        self.documents = 0
        self.empty_documents = 0
        self.tokens = 0
        self.samples = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents, given as their concatenated tokens and per-document lengths."""
        self.documents += int(np.count_nonzero(lengths))
        self.empty_documents += int(lengths.size - np.count_nonzero(lengths))
        self.tokens += tokens.size

        stream = np.concatenate([self.pending, tokens])
        sample_len = self.seq_len + 1
        n_samples = (stream.size - 1) // self.seq_len if stream.size >= sample_len else 0
        for k in range(n_samples):
            start = k * self.seq_len
            self.writer.write({COLUMN: stream[start:start + sample_len]})
        self.samples += n_samples
        self.pending = stream[n_samples * self.seq_len:].copy()

    def stats(self) -> dict[str, int]:
        # The first pending token is already stored as the last token of the last sample.
        dropped = self.pending.size - 1 if self.samples else self.pending.size
        return {
            "documents": self.documents,
            "empty_documents": self.empty_documents,
            "tokens": self.tokens,
            "samples": self.samples,
            "dropped_tokens": dropped,
        }


def write_splits(
    documents: Iterable[str],
    is_val: np.ndarray,
    staging: Path,
    seq_len: int,
    workers: int,
    progress: bool,
) -> dict[str, dict[str, int]]:
    """Tokenize `documents`, route document i to val if `is_val[i]`, and write both splits.

    Returns the per-split counts of `SplitWriter.stats`.
    """
    n_documents = is_val.size
    n_read = 0
    # The first chunks are tokenized while streaming is still being imported; their tokens wait
    # in `waiting_chunks` until the writers exist.
    mds_writer = start_importing_mds_writer()
    waiting_chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    splits: dict[str, SplitWriter] | None = None
    with ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(total=n_documents, desc="tokenizing", unit="doc", disable=not progress)
        )
        start_time = time.perf_counter()
        total_tokens = 0

        for tokens, lengths in iter_tokenized_chunks(documents, workers):
            chunk_is_val = is_val[n_read:n_read + lengths.size]
            n_read += lengths.size
            if n_read > n_documents:
                break
            waiting_chunks.append((tokens, lengths, chunk_is_val))
            if splits is None and mds_writer.done():
                splits = open_split_writers(stack, mds_writer, staging, seq_len)
            if splits is not None:
                for waiting_chunk in waiting_chunks:
                    route_chunk(splits, *waiting_chunk)
                waiting_chunks.clear()

            total_tokens += tokens.size
            rate = total_tokens / max(time.perf_counter() - start_time, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
            bar.update(lengths.size)

        if splits is None:
            splits = open_split_writers(stack, mds_writer, staging, seq_len)
        for waiting_chunk in waiting_chunks:
            route_chunk(splits, *waiting_chunk)

    if n_read != n_documents:
        raise ConversionError(
            f"the inputs changed while converting: counted {n_documents} documents in the "
            f"first pass, then read {'more' if n_read > n_documents else n_read}. Rerun."
        )
    return {split: splits[split].stats() for split in SPLITS}


@functools.lru_cache(maxsize=1)
def start_importing_mds_writer() -> Future[Any]:
    """Start importing streaming's MDSWriter in a thread, once per process; return its future.

    The import takes seconds, because streaming imports torch and transformers, and the
    conversion needs the writer only once the first tokens are ready.
    """
    future: Future[Any] = Future()

    def import_writer() -> None:
        try:
            from streaming import MDSWriter

            future.set_result(MDSWriter)
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(err)

    threading.Thread(target=import_writer, name="import-streaming").start()
    return future


def open_split_writers(
    stack: ExitStack, mds_writer: Future[Any], staging: Path, seq_len: int
) -> dict[str, SplitWriter]:
    """Open one MDS writer per split in `staging`; `stack` closes them, which writes index.json."""
    writer_class = token_sample_writer(mds_writer.result())
    columns = {COLUMN: f"ndarray:{np.dtype(TOKEN_DTYPE).name}:{seq_len + 1}"}
    splits = {}
    for split in SPLITS:
        writer = writer_class(out=str(staging / split), columns=columns, compression=None)
        splits[split] = SplitWriter(stack.enter_context(writer), seq_len)
    return splits


def token_sample_writer(mds_writer: type[MDSWriter]) -> type[MDSWriter]:
    """Return a subclass of streaming's MDSWriter that encodes this converter's samples faster.

    A sample here is one column of seq_len + 1 uint16 ids, whose MDS encoding is the array's raw
    bytes with no header. MDSWriter's general `encode_sample` looks up and parses the column's
    encoding string on every sample: about 30 us, 1.9 s of the main thread's time for 64k samples
    (cProfile, 65M tokens). With many workers that caps the whole conversion, since one thread
    writes every sample. This one copies the bytes and keeps the size check. The shard bytes are
    the same (tested).
    """

    class TokenSampleWriter(mds_writer):
        def encode_sample(self, sample: dict[str, Any]) -> bytes:
            data = sample[COLUMN].tobytes()
            if len(data) != self.column_sizes[0]:
                raise ValueError(
                    f"TokenSampleWriter got a sample of {len(data)} bytes for column {COLUMN!r} of "
                    f"{self.column_sizes[0]} bytes. It writes only fixed-length samples of seq_len + 1 ids, "
                    "so use streaming's MDSWriter for anything else."
                )
            return data

    return TokenSampleWriter


def route_chunk(
    splits: dict[str, SplitWriter], tokens: np.ndarray, lengths: np.ndarray, chunk_is_val: np.ndarray
) -> None:
    """Add each document of a tokenized chunk to the split that `chunk_is_val` assigns it."""
    token_is_val = np.repeat(chunk_is_val, lengths)
    splits["val"].add(tokens[token_is_val], lengths[chunk_is_val])
    splits["train"].add(tokens[~token_is_val], lengths[~chunk_is_val])


def iter_tokenized_chunks(documents: Iterable[str], workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield `tokenize_chunk` results for consecutive chunks of `documents`, in input order.

    `workers` threads tokenize while the caller reads, packs and writes. At most
    CHUNKS_IN_FLIGHT_PER_WORKER chunks per worker are submitted ahead of the consumer, so the
    input is never read far ahead (ThreadPoolExecutor.map would read all of it first).
    """
    chunks = iter_chunks(documents)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenize") as pool:
        pending: deque[Future[tuple[np.ndarray, np.ndarray]]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(tokenize_chunk, chunk))
                if len(pending) >= workers * CHUNKS_IN_FLIGHT_PER_WORKER:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def iter_chunks(documents: Iterable[str]) -> Iterator[list[str]]:
    """Group documents into lists of at most DOCS_PER_CHUNK, closing one at CHARS_PER_CHUNK."""
    chunk: list[str] = []
    n_chars = 0
    for text in documents:
        chunk.append(text)
        n_chars += len(text)
        if len(chunk) >= DOCS_PER_CHUNK or n_chars >= CHARS_PER_CHUNK:
            yield chunk
            chunk, n_chars = [], 0
    if chunk:
        yield chunk


def tokenize_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode each non-empty text like `encode_ordinary` and append EOT_ID after it.

    Returns the concatenated token ids (uint16) and each text's token count including its
    EOT_ID. An empty text gets no tokens and count 0.
    """
    encoding = thread_tokenizer()
    eot = np.array([EOT_ID], dtype=np.uint32)
    pieces: list[np.ndarray] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if not text:
            continue
        document_ids = encode_ordinary_numpy(encoding, text)
        pieces += [document_ids, eot]
        lengths[i] = document_ids.size + 1
    if not pieces:
        return np.empty(0, dtype=TOKEN_DTYPE), lengths
    # uint32 -> uint16 is safe: get_tokenizer checked that every id fits.
    return np.concatenate(pieces, dtype=TOKEN_DTYPE, casting="same_kind"), lengths


def encode_ordinary_numpy(encoding: tiktoken.Encoding, text: str) -> np.ndarray:
    """Return `encoding.encode_ordinary(text)` as a uint32 array, without building a list of ints.

    With no special token allowed or disallowed, `encode_to_numpy` encodes "<|endoftext|>" as
    ordinary text, like `encode_ordinary`. Text with lone surrogates gets the same repair as
    in `encode_ordinary`, which `encode_to_numpy` lacks.
    """
    try:
        return encoding.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return encoding.encode_to_numpy(text, disallowed_special=())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input", action="append", dest="inputs", metavar="SRC",
        help="a .txt, .jsonl, .jsonl.gz, .parquet, .tar or .tar.xz (OpenWebText layout) "
        "file, a folder of them, builtin:pydoc-topics or hf:NAME; repeat for several "
        "(default: builtin:pydoc-topics)",
    )
    parser.add_argument(
        "--out-root", required=True, help="output folder for train/, val/ and stats.json"
    )
    parser.add_argument(
        "--seq-len", type=int, default=1024,
        help="context length T in tokens; each sample stores T+1 tokens (default: 1024)",
    )
    parser.add_argument(
        "--workers", type=int, default=1,
        help="tokenizer threads (default: 1)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.0005,
        help="share of documents for validation, rounded up to whole documents (default: 0.0005)",
    )
    parser.add_argument(
        "--seed", type=int, default=2357, help="seed of the train/val split (default: 2357)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output in --out-root"
    )
    parser.add_argument(
        "--max-documents", type=int, default=None, metavar="N",
        help="read only the first N documents of the inputs (default: all)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    start_importing_mds_writer()  # also while the inputs are checked and the tokenizer loads
    try:
        stats = convert_to_mds(
            inputs=args.inputs or ["builtin:pydoc-topics"],
            out_root=args.out_root,
            seq_len=args.seq_len,
            workers=args.workers,
            val_fraction=args.val_fraction,
            seed=args.seed,
            overwrite=args.overwrite,
            max_documents=args.max_documents,
        )
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; no new output was written to {args.out_root}", file=sys.stderr)
        return 130
    print(f"{'split':<6} {'documents':>10} {'tokens':>14} {'samples':>11}")
    for split, counts in stats["splits"].items():
        print(f"{split:<6} {counts['documents']:>10,} {counts['tokens']:>14,} {counts['samples']:>11,}")
    print(f"wrote {args.out_root} (train/, val/, stats.json)")
    return 0


if __name__ == "__main__":
    exit_code = main()
    # Skip the interpreter's teardown of the modules that streaming imported (torch, transformers):
    # it takes about a second, and every output file is closed by now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
