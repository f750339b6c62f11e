"""Read text documents from the input kinds that `owt_to_mds.py` accepts.

Each input string names one source:

| input                    | documents                                                  |
|--------------------------|------------------------------------------------------------|
| `builtin:pydoc-topics`   | CPython's `pydoc_data.topics.topics`, one per topic, sorted by key |
| `hf:NAME`                | the `text` column of `datasets.load_dataset(NAME, split="train")`  |
| `FILE.txt`               | the whole file (UTF-8, a leading byte order mark is dropped) |
| `FILE.jsonl[.gz]`        | the string `text` field of each JSON object, one per line  |
| `FILE.parquet`           | the `text` column, read in batches                         |
| `FILE.tar[.xz]`          | OpenWebText layout: `.xz` members, each an xz tar of `.txt` documents |
| `FOLDER`                 | every file above inside it, recursively, in sorted path order |

`resolve_sources` checks every input up front, so a missing file or a parquet file
without a `text` column fails before anything is written. `iter_documents` then streams
the documents in a fixed order, so two passes over the same inputs yield the same sequence.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import json
import lzma
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

BUILTIN_PREFIX = "builtin:"
HF_PREFIX = "hf:"
BUILTIN_SOURCES = ("pydoc-topics",)

# Longest suffixes first, so `x.jsonl.gz` is not taken for an unknown `.gz` file.
FILE_KINDS = {
    ".jsonl.gz": "jsonl",
    ".tar.xz": "owt-tar",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".tar": "owt-tar",
    ".txt": "txt",
}

PARQUET_BATCH_ROWS = 1024

# The Hugging Face loading script of Skylion007/openwebtext (openwebtext.py) cleans each
# archived document with re.sub("\n\n\n+", "\n\n", text).strip(). The archive reader does
# the same, so its documents match the hub's text.
_BLANK_LINE_RUN = re.compile("\n\n\n+")


class ConversionError(ValueError):
    """Invalid input, output folder or argument; the message names the value and the fix."""


@dataclass(frozen=True)
class Source:
    """One readable source of documents; `kind` is a key of READERS."""

    kind: str
    location: str


def resolve_sources(inputs: list[str]) -> list[Source]:
    """Check every input and expand folders into their files, in sorted path order.

    Raises:
        ConversionError: an input is missing, unreadable, of an unknown kind, a folder
            without usable files, or a parquet file without a string `text` column.
    """
    if not inputs:
        raise ConversionError("no inputs given: pass at least one --input")
    sources = []
    for text in inputs:
        sources.extend(_resolve_one(text))
    return sources


def _resolve_one(text: str) -> list[Source]:
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_SOURCES:
            raise ConversionError(
                f"unknown built-in source {text!r}; available: "
                + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_SOURCES)
            )
        return [Source("pydoc-topics", name)]
    if text.startswith(HF_PREFIX):
        name = text[len(HF_PREFIX):]
        if not name:
            raise ConversionError(f"input {text!r} names no dataset; use hf:OWNER/NAME")
        if importlib.util.find_spec("datasets") is None:
            raise ConversionError(
                f"input {text} needs the Hugging Face `datasets` package: pip install -e '.[hub]'"
            )
        return [Source("hf", name)]

    path = Path(text)
    if path.is_dir():
        return _resolve_folder(path)
    if not path.exists():
        raise ConversionError(f"input not found: {text}")
    kind = file_kind(path)
    if kind is None:
        raise ConversionError(
            f"input {text} has an unsupported file type; expected one of "
            + ", ".join(sorted(FILE_KINDS)) + ", a folder, builtin:pydoc-topics or hf:NAME"
        )
    return [_checked_file_source(kind, path)]


def _resolve_folder(folder: Path) -> list[Source]:
    try:
        paths = [p for p in folder.rglob("*") if p.is_file() and file_kind(p) is not None]
    except OSError as err:
        raise ConversionError(f"cannot list input folder {folder}: {err}") from err
    if not paths:
        raise ConversionError(
            f"input folder {folder} contains no usable files; expected files ending in "
            + ", ".join(sorted(FILE_KINDS))
        )
    paths.sort(key=lambda p: p.relative_to(folder).as_posix())
    return [_checked_file_source(file_kind(p), p) for p in paths]


def file_kind(path: Path) -> str | None:
    """Return the reader kind for a file name, or None for a file type that is not read."""
    name = path.name.lower()
    for suffix, kind in FILE_KINDS.items():
        if name.endswith(suffix):
            return kind
    return None


def _checked_file_source(kind: str, path: Path) -> Source:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise ConversionError(f"cannot read input {path}: {err.strerror}") from err
    if kind == "parquet":
        _check_parquet_schema(path)
    return Source(kind, str(path))


def _check_parquet_schema(path: Path) -> None:
    try:
        schema = pq.ParquetFile(path).schema_arrow
    except (pa.ArrowException, OSError) as err:
        raise ConversionError(f"cannot read parquet file {path}: {err}") from err
    if "text" not in schema.names:
        raise ConversionError(
            f"parquet file {path} has no 'text' column; columns found: {schema.names}. "
            "Rename the column that holds the documents to 'text'."
        )
    text_type = schema.field("text").type
    if str(text_type) not in ("string", "large_string"):
        raise ConversionError(
            f"parquet file {path}: column 'text' has type {text_type}, expected string"
        )


def iter_documents(sources: list[Source], limit: int | None = None) -> Iterator[str]:
    """Yield the text of every document of every source in order, at most `limit` of them."""
    documents = (text for source in sources for text in READERS[source.kind](source.location))
    return islice(documents, limit)


def count_documents(sources: list[Source], limit: int | None = None, progress: bool = False) -> int:
    """Count the documents that `iter_documents` yields.

    JSONL and archive inputs are read in full, so their decoding and JSON errors surface
    here, before any tokenizing. The other kinds read no text in this pass: a text file is one
    document (its UTF-8 errors surface when it is tokenized), parquet files are counted from
    their metadata and hub datasets by their length.
    """
    total = 0
    with tqdm(desc="counting documents", unit="doc", disable=not progress) as bar:
        for source in sources:
            remaining = None if limit is None else limit - total
            if remaining == 0:
                break
            if source.kind in ("txt", "parquet", "hf"):
                count = _count_from_metadata(source)
                if remaining is not None:
                    count = min(count, remaining)
                bar.update(count)
            else:
                count = 0
                for _ in islice(READERS[source.kind](source.location), remaining):
                    count += 1
                    bar.update()
            total += count
    return total


def _count_from_metadata(source: Source) -> int:
    if source.kind == "txt":
        return 1
    if source.kind == "parquet":
        return pq.ParquetFile(source.location).metadata.num_rows
    return len(_load_hub_dataset(source.location))


def _read_pydoc_topics(_: str) -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def _read_txt(path: str) -> Iterator[str]:
    with open(path, "rb") as f:
        data = f.read()
    yield decode_utf8(data, path)


def decode_utf8(data: bytes, name: str) -> str:
    """Decode UTF-8 bytes, dropping a leading byte order mark; errors name the byte offset."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConversionError(
            f"{name} is not valid UTF-8: {err.reason} at byte offset {start + err.start}. "
            "Re-encode it as UTF-8, for example with: iconv -f LATIN1 -t UTF-8"
        ) from err


def _read_jsonl(path: str) -> Iterator[str]:
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                yield _parse_jsonl_line(line, path, line_number)


def _parse_jsonl_line(line: bytes, path: str, line_number: int) -> str:
    where = f"{path}, line {line_number}"
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        line_start = line[:80].decode("utf-8", errors="replace").rstrip()
        raise ConversionError(f"{where}: invalid JSON ({err}); line starts with {line_start!r}") from err
    if not isinstance(record, dict):
        raise ConversionError(
            f"{where}: expected a JSON object with a string 'text' field, "
            f"found a JSON {type(record).__name__}"
        )
    if "text" not in record:
        raise ConversionError(f"{where}: no 'text' key; keys found: {sorted(record)}")
    text = record["text"]
    if not isinstance(text, str):
        raise ConversionError(f"{where}: 'text' must be a string, found {type(text).__name__}")
    return text


def _read_parquet(path: str) -> Iterator[str]:
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["text"]):
        for text in batch.column(0).to_pylist():
            if text is None:
                raise ConversionError(f"{path}, row {row}: 'text' is null, expected a string")
            yield text
            row += 1


def _read_owt_tar(path: str) -> Iterator[str]:
    # Mode "r|*" reads the archive as a stream. Nothing is extracted to disk and no member
    # index is built, so memory does not grow with the archive size.
    location = path
    try:
        with tarfile.open(path, mode="r|*") as outer:
            for member in outer:
                if not (member.isfile() and member.name.endswith(".xz")):
                    continue
                location = f"{path}/{member.name}"
                inner_file = outer.extractfile(member)
                with tarfile.open(fileobj=inner_file, mode="r|*") as inner:
                    yield from _read_inner_tar(inner, location)
                location = path
    except (tarfile.TarError, lzma.LZMAError, EOFError) as err:
        raise ConversionError(
            f"cannot read archive {location}: {err}. The file may be truncated or not a tar "
            "archive; download it again."
        ) from err


def _read_inner_tar(inner: tarfile.TarFile, name: str) -> Iterator[str]:
    for member in inner:
        if not (member.isfile() and member.name.endswith(".txt")):
            continue
        data = inner.extractfile(member).read()
        text = decode_utf8(data, f"{name}/{member.name}")
        yield _BLANK_LINE_RUN.sub("\n\n", text).strip()


def _load_hub_dataset(name: str):
    import datasets  # optional dependency, checked by resolve_sources

    return datasets.load_dataset(name, split="train")


def _read_hub_dataset(name: str) -> Iterator[str]:
    # NOTE: no test runs this reader because the tests have no network access.
    for record in _load_hub_dataset(name):
        yield record["text"]


READERS = {
    "pydoc-topics": _read_pydoc_topics,
    "hf": _read_hub_dataset,
    "txt": _read_txt,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "owt-tar": _read_owt_tar,
}
