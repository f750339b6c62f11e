"""Conversion throughput: `convert/owt_to_mds.py` against tiktoken's own batch encoding of the same text.

tiktoken's `encode_ordinary_batch` on text already in memory, with as many threads as the conversion
has workers, is the limit for this job: the conversion also reads files, splits, packs and writes
shards. Each conversion runs as its own process, timed end to end (interpreter start-up included),
and its peak resident memory is that process's.

Every conversion pays a fixed start-up of a few seconds, mostly `import streaming` (which imports
torch and transformers). On the corpora here (8M tokens) that start-up is a large share of the time;
on OpenWebText (9B tokens) it is nothing. So each worker count is timed twice: on the inputs once,
and on the inputs given `--copies` times. The sustained rate, what a long conversion reaches once
started, is the difference of the two: (tokens of N copies - tokens of 1) / (seconds of N copies -
seconds of 1 copy), which cancels the start-up. The limit is measured on one copy: the text is the
same, so the rate is too. A conversion of two documents measures the start-up alone.

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


def time_conversion(inputs: list[str], workers: int, seq_len: int, *extra: str) -> tuple[float, float, dict]:
    """Run the conversion in a child process; return (seconds, peak RSS in MiB, stats.json contents)."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(REPO / 'convert/owt_to_mds.py'), '--out-root', out, '--seq-len', str(seq_len),
                   '--workers', str(workers), *extra]
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
    parser.add_argument('--copies', type=int, default=8,
                        help='for the sustained rate, convert the inputs given this many times (default: 8)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--json', help='also write the results to this file')
    args = parser.parse_args(argv)

    results = {'cpu_count': os.cpu_count(), 'copies': args.copies, 'runs': {}}
    for workers in args.workers:
        run = {'start_up_seconds': [], 'tiktoken_limit_tokens_per_sec': []}
        for copies in (1, args.copies):
            run[copies] = {'seconds': [], 'peak_rss_mib': []}
        for _ in range(args.repeats):
            seconds, _, _ = time_conversion(args.input, workers, args.seq_len, '--max-documents', '2')
            run['start_up_seconds'].append(seconds)
            for copies in (1, args.copies):
                seconds, peak, stats = time_conversion(args.input * copies, workers, args.seq_len)
                run[copies]['seconds'].append(seconds)
                run[copies]['peak_rss_mib'].append(peak)
                run[copies]['tokens'] = stats['splits']['train']['tokens'] + stats['splits']['val']['tokens']
            limit, limit_tokens = tiktoken_limit(args.input, workers)
            run['tiktoken_limit_tokens_per_sec'].append(limit)
        assert run[1]['tokens'] == limit_tokens, (run[1]['tokens'], limit_tokens)
        limit = statistics.median(run['tiktoken_limit_tokens_per_sec'])
        line = [f'workers {workers}: limit {limit:,.0f} tokens/s;']
        for copies in (1, args.copies):
            rates = [run[copies]['tokens'] / s for s in run[copies]['seconds']]
            run[copies]['tokens_per_sec'] = rates
            run[copies]['fraction_of_limit_median'] = statistics.median(rates) / limit
            line.append(f'{copies} cop{"y" if copies == 1 else "ies"} ({run[copies]["tokens"]:,} tokens): '
                        f'{statistics.median(rates):,.0f} tokens/s = {statistics.median(rates) / limit:.0%};')
        extra_tokens = run[args.copies]['tokens'] - run[1]['tokens']
        sustained = [extra_tokens / (many - one) for one, many in zip(run[1]['seconds'], run[args.copies]['seconds'])]
        run['sustained_tokens_per_sec'] = sustained
        run['sustained_fraction_of_limit_median'] = statistics.median(sustained) / limit
        line.append(f'sustained {statistics.median(sustained):,.0f} tokens/s = {statistics.median(sustained) / limit:.0%};')
        line.append(f'start-up {statistics.median(run["start_up_seconds"]):.2f} s')
        results['runs'][workers] = run
        print(' '.join(line), flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
