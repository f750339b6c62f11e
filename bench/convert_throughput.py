"""Conversion throughput: `convert/owt_to_mds.py` against tiktoken's own batch encoding of the same text.

tiktoken's `encode_ordinary_batch` on text already in memory, with as many threads as the conversion
has workers, is the limit for this job: the conversion also reads files, splits, packs and writes
shards. Each conversion runs as its own process, timed end to end (interpreter start-up included),
and its peak resident memory is the largest of it and its worker processes.

    python bench/convert_throughput.py --input ../shared/data/corpora/gutenberg --workers 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tiktoken

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from convert.text_sources import iter_documents, resolve_sources  # noqa: E402


def tiktoken_limit(inputs: list[str], threads: int) -> tuple[float, int]:
    """Return (tokens per second, tokens) of encode_ordinary_batch over all documents held in memory."""
    documents = list(iter_documents(resolve_sources(inputs)))
    encoding = tiktoken.get_encoding('gpt2')
    encoding.encode_ordinary('warm up')
    start = time.perf_counter()
    encoded = encoding.encode_ordinary_batch(documents, num_threads=threads)
    elapsed = time.perf_counter() - start
    tokens = sum(len(ids) for ids in encoded) + len(documents)  # + one end-of-text per document
    return tokens / elapsed, tokens


def time_conversion(inputs: list[str], workers: int, seq_len: int) -> tuple[float, float, dict]:
    """Run the conversion in a child process; return (seconds, peak RSS in MiB, stats.json contents).

    The peak is the largest of the child and the worker processes it waited for (ru_maxrss, KiB on Linux).
    """
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(REPO / 'convert/owt_to_mds.py'), '--out-root', out, '--seq-len', str(seq_len),
                   '--workers', str(workers)]
        for item in inputs:
            command += ['--input', item]
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f'conversion failed: {" ".join(command)}')
        stats = json.loads(Path(out, 'stats.json').read_text())
    return seconds, usage.ru_maxrss / 1024, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--input', action='append', required=True, help='as for owt_to_mds.py; repeatable')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--seq-len', type=int, default=1024)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--json', help='also write the results to this file')
    args = parser.parse_args(argv)

    results = {'cpu_count': os.cpu_count(), 'runs': {}}
    for workers in args.workers:
        seconds, limits, peaks = [], [], []
        for _ in range(args.repeats):
            elapsed, peak, stats = time_conversion(args.input, workers, args.seq_len)
            seconds.append(elapsed)
            peaks.append(peak)
            limit, limit_tokens = tiktoken_limit(args.input, workers)
            limits.append(limit)
        tokens = stats['splits']['train']['tokens'] + stats['splits']['val']['tokens']
        assert tokens == limit_tokens, (tokens, limit_tokens)
        rates = [tokens / s for s in seconds]
        results['runs'][workers] = {
            'tokens': tokens,
            'seconds': seconds,
            'tokens_per_sec': rates,
            'tiktoken_limit_tokens_per_sec': limits,
            'fraction_of_limit_median': statistics.median(rates) / statistics.median(limits),
            'peak_rss_mib': max(peaks),
        }
        print(f'workers {workers}: {statistics.median(rates):,.0f} tokens/s '
              f'(limit {statistics.median(limits):,.0f}), over {args.repeats} runs', flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
