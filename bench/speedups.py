"""Measure the speedup algorithms on the CPU recipe: val loss at a token budget, and time to the baseline's loss.

    python bench/speedups.py                                   # every config, 2 seeds for baseline and combined
    python bench/speedups.py --configs baseline,rotary --budget-tokens 65536 --seeds 1337   # a smoke run

Steps:
1. Convert the text under ../shared/data/corpora/ (Gutenberg books and the Wikipedia sample by
   default) once into MDS shards of `--seq-len` tokens under `--data-root`. The val split is a fixed
   set of held-out documents (seed 2357, `--val-fraction`), and each eval reads the same first
   `--eval-batches` batches of it, unshuffled.
2. Train `yamls/gpt2-cpu.yaml` once per config and seed as a subprocess of
   `python -m gpt2_composer.train`, with max_duration, warmup and eval interval in tokens, so every
   config trains on the same number of tokens whatever its tokens per step.
3. Read each run's metrics.jsonl: `metrics/val/LanguageCrossEntropy` at each eval, `time/token`
   and `time/train` (Composer's SpeedMonitor, training wall time without evals).
4. Write a Markdown table: final val loss at the budget (mean and spread over seeds), and the tokens
   and training seconds each config needs to reach the baseline's final val loss, interpolated
   linearly between evals.

The runs take the machine's cores for hours at the default budget, and the wall times are only
comparable when nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / 'shared' / 'data' / 'corpora'
TIKTOKEN_CACHE = REPO.parent / 'shared' / 'data' / 'tiktoken_cache'  # GPT-2's BPE files, for offline use
DEFAULT_INPUTS = [str(CORPORA / 'gutenberg'), str(CORPORA / 'wikipedia-en-sample')]
VAL_KEY = 'metrics/val/LanguageCrossEntropy'

# Overrides per config, on top of the common ones in `run_overrides`. `combined` is built from
# `--combined`. Gradient clipping is on in every config (grad_clip_norm=1.0 in the CPU recipe).
# LowPrecisionLayerNorm is left out: it only acts under amp, which Composer rejects on CPUs.
CONFIGS: dict[str, list[str]] = {
    'baseline': [],
    'alibi': ['algorithms.alibi={}'],
    'rotary': ['algorithms.rotary.base=10000'],
    'qk_norm': ['algorithms.qk_norm={}'],
    'relu_squared': ['algorithms.relu_squared={}'],
    'zero_init_projections': ['algorithms.zero_init_projections={}'],
    'logit_softcap': ['algorithms.logit_softcap.cap=30'],
    'seq_length_warmup': ['algorithms.seq_length_warmup.duration=0.3', 'algorithms.seq_length_warmup.min_seq_len=32'],
    'ema': ['algorithms.ema.half_life=50ba'],
    'muon': ['optimizer.name=muon', 'optimizer.muon_lr=0.02', 'optimizer.muon_momentum=0.95'],
}
DEFAULT_COMBINED = 'rotary,qk_norm,relu_squared,zero_init_projections,muon'


@dataclass
class Curve:
    """One run's val loss at each eval, with the tokens and training seconds at that point."""

    tokens: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def first_crossing(self, target: float) -> Optional[tuple[float, float]]:
        """Return (tokens, seconds) where the loss first reaches `target`, interpolated between evals.

        A run already below the target at its first eval gets that eval's point, an upper bound.
        """
        points = list(zip(self.tokens, self.seconds, self.losses))
        for (t0, s0, l0), (t1, s1, l1) in zip(points, points[1:]):
            if l1 <= target < l0:
                fraction = (l0 - target) / (l0 - l1)
                return t0 + fraction * (t1 - t0), s0 + fraction * (s1 - s0)
        if points and points[0][2] <= target:
            return points[0][0], points[0][1]
        return None


def combined_overrides(names: list[str]) -> list[str]:
    overrides = []
    for name in names:
        if name not in CONFIGS or name == 'baseline':
            valid = ', '.join(n for n in CONFIGS if n != 'baseline')
            raise SystemExit(f'error: invalid --combined entry {name!r}; use config names from: {valid}')
        overrides += CONFIGS[name]
    return overrides


def prepare_data(inputs: list[str], data_root: Path, seq_len: int, val_fraction: float, workers: int) -> Path:
    """Convert `inputs` to MDS under `data_root` unless a finished conversion of the same inputs is there."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # `convert/` is a folder of scripts beside this one
    from convert.owt_to_mds import convert_to_mds

    out = data_root / f'mds-seq{seq_len}'
    stats_path = out / 'stats.json'
    if stats_path.is_file():
        print(f'data: reusing {out}', flush=True)
        return out
    print(f'data: converting {len(inputs)} inputs into {out} (one-time)', flush=True)
    convert_to_mds(inputs, str(out), seq_len=seq_len, workers=workers, val_fraction=val_fraction,
                   overwrite=True, progress=False)
    return out


def run_overrides(args: argparse.Namespace, data: Path, run_dir: Path, seed: int) -> list[str]:
    budget = args.budget_tokens
    warmup = max(1, round(budget * args.warmup_fraction))
    eval_every = max(1, budget // args.evals)
    return [
        f'data.root={data}', f'seed={seed}', f'data.shuffle_seed={seed}', f'run_name={run_dir.name}',
        f'max_duration={budget}tok', f'scheduler.warmup={warmup}tok', 'scheduler.decay_end=null',
        f'eval_interval={eval_every}tok', f'eval_batches={args.eval_batches}', 'eval_train_split=false',
        f'metrics_file={run_dir / "metrics.jsonl"}', 'save_folder=null', 'wandb.enabled=false',
        f'log_interval={args.log_interval}',
    ]


def train(overrides: list[str], run_dir: Path) -> float:
    """Run one training subprocess; return its wall time in seconds. Its output goes to run_dir/train.log."""
    command = [sys.executable, '-m', 'gpt2_composer.train', 'yamls/gpt2-cpu.yaml', *overrides]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / 'metrics.jsonl').unlink(missing_ok=True)  # MetricsFile appends
    (run_dir / 'command.txt').write_text(shlex.join(command) + '\n')
    env = {**os.environ, 'WANDB_MODE': 'disabled', 'PYTHONPATH': str(REPO)}
    start = time.perf_counter()
    with open(run_dir / 'train.log', 'w') as log:
        result = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = (run_dir / 'train.log').read_text()[-3000:]
        raise SystemExit(f'error: training failed (exit {result.returncode}) for {run_dir}:\n{tail}')
    return time.perf_counter() - start


def finished_before(run_dir: Path, overrides: list[str], budget: int) -> bool:
    """Return True if `run_dir` contains a run of the same overrides whose last eval is at the budget."""
    command_file, metrics_file = run_dir / 'command.txt', run_dir / 'metrics.jsonl'
    if not command_file.is_file() or not metrics_file.is_file():
        return False
    same_command = shlex.split(command_file.read_text())[4:] == overrides  # after python -m module recipe
    curve = read_curve(metrics_file)
    return same_command and bool(curve.tokens) and curve.tokens[-1] >= budget


def read_curve(metrics_file: Path) -> Curve:
    """Pair every val-loss record with the token count and training time at the same step."""
    tokens: dict[int, float] = {}
    seconds: dict[int, float] = {}
    losses: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        step = record.get('step')
        if 'time/token' in record:
            tokens[step] = record['time/token']
        if 'time/train' in record:
            seconds[step] = record['time/train'] * 3600  # SpeedMonitor logs hours by default
        if VAL_KEY in record:
            losses[step] = record[VAL_KEY]
    curve = Curve()
    for step in sorted(losses):
        # Composer logs `time/token` and `time/train` under the same step as the eval after it.
        if step in tokens and step in seconds:
            curve.tokens.append(tokens[step])
            curve.seconds.append(seconds[step])
            curve.losses.append(losses[step])
    return curve


def spread(values: list[float], spec: str) -> str:
    """Format the mean with `spec` and, for several seeds, ± half the range (max - min) / 2."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return format(mean, spec)
    return f'{format(mean, spec)} ± {format((max(values) - min(values)) / 2, spec)}'


def summarize(curves: dict[str, list[Curve]]) -> tuple[float, list[dict]]:
    """Return the baseline's mean final val loss and one row per config."""
    target = statistics.fmean(c.losses[-1] for c in curves['baseline'])
    baseline_seconds = statistics.fmean(c.seconds[-1] for c in curves['baseline'])
    rows = []
    for name, runs in curves.items():
        crossings = [run.first_crossing(target) for run in runs]
        row = {
            'name': name,
            'seeds': len(runs),
            'final': spread([run.losses[-1] for run in runs], '.4f'),
            'train_seconds': spread([run.seconds[-1] for run in runs], ',.1f'),
            'tokens': 'not reached',
            'seconds': 'not reached',
            'speedup': '-',
        }
        if name == 'baseline':  # the target is its own mean final loss, reached at the budget by definition
            row['tokens'] = spread([run.tokens[-1] for run in runs], ',.0f')
            row['seconds'] = row['train_seconds']
            row['speedup'] = '1.00x'
        elif all(c is not None for c in crossings):  # a config counts as reaching the target only if every seed does
            seconds = [c[1] for c in crossings]
            row['tokens'] = spread([c[0] for c in crossings], ',.0f')
            row['seconds'] = spread(seconds, ',.1f')
            row['speedup'] = f'{baseline_seconds / statistics.fmean(seconds):.2f}x'
        rows.append(row)
    return target, rows


RESULTS_START = '<!-- speedups.py results start -->'
RESULTS_END = '<!-- speedups.py results end -->'


def write_results(path: Path, results: str) -> None:
    """Put `results` between the markers of an existing page, or write a page of its own."""
    block = f'{RESULTS_START}\n{results}{RESULTS_END}\n'
    text = path.read_text() if path.is_file() else ''
    if RESULTS_START in text and RESULTS_END in text:
        before = text[:text.index(RESULTS_START)]
        after = text[text.index(RESULTS_END) + len(RESULTS_END):].lstrip('\n')
        path.write_text(before + block + after)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + block)


def write_table(path: Path, command: str, target: float, rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        '| config | seeds | final val loss | tokens to baseline loss | train seconds to baseline loss | '
        'speedup (time) | train seconds at budget |',
        '|---|---|---|---|---|---|---|',
    ]
    for row in rows:
        lines.append(f"| {row['name']} | {row['seeds']} | {row['final']} | {row['tokens']} | {row['seconds']} | "
                     f"{row['speedup']} | {row['train_seconds']} |")
    text = '\n'.join([
        f'Budget {args.budget_tokens:,} tokens per run; baseline final val loss {target:.4f} (the target).',
        '',
        *lines,
        '',
        'Command:',
        '',
        '```bash',
        command,
        '```',
        '',
    ])
    write_results(path, text)
    print(text, flush=True)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', default=','.join([*CONFIGS, 'combined']),
                        help=f'comma-separated configs to run; baseline is always run. Known: {", ".join(CONFIGS)}, '
                        'combined')
    parser.add_argument('--combined', default=DEFAULT_COMBINED,
                        help='comma-separated configs whose overrides make up the combined config')
    parser.add_argument('--extra-combined', action='append', default=[], metavar='NAME=CONFIG,CONFIG,...',
                        help='another combination to run under its own name, with the first seed; repeatable')
    parser.add_argument('--budget-tokens', type=int, default=1_048_576,
                        help='training tokens per run (max_duration); the CPU recipe trains 2,048 per step')
    parser.add_argument('--seeds', type=int, nargs='+', default=[1337, 1338],
                        help='seeds for baseline and combined (model init and data order)')
    parser.add_argument('--all-seeds', action='store_true',
                        help='run every config with every seed; by default single algorithms use the first seed')
    parser.add_argument('--data-root', type=Path, default=Path('/tmp/gpt2-composer-speedups'),
                        help='folder for the converted shards (created once, reused) and the runs')
    parser.add_argument('--inputs', nargs='+', default=DEFAULT_INPUTS, help='text inputs for convert_to_mds')
    parser.add_argument('--seq-len', type=int, default=256, help='tokens per sample, the CPU recipe block size')
    parser.add_argument('--val-fraction', type=float, default=0.02, help='share of documents held out for val')
    parser.add_argument('--convert-workers', type=int, default=2)
    parser.add_argument('--evals', type=int, default=8, help='evals per run, evenly spaced in tokens')
    parser.add_argument('--eval-batches', type=int, default=16, help='val batches of 8 samples per eval')
    parser.add_argument('--warmup-fraction', type=float, default=0.1, help='lr warmup as a fraction of the budget')
    parser.add_argument('--log-interval', type=int, default=50)
    parser.add_argument('--reuse', action='store_true',
                        help='keep a run whose metrics.jsonl already reaches the budget with the same command, '
                        'instead of training it again (to finish an interrupted benchmark, or rerun one run)')
    parser.add_argument('--out', type=Path, default=REPO / 'docs' / 'speedups.md',
                        help='page that receives the results table, between its results markers')
    return parser.parse_args(argv)


def config_plan(args: argparse.Namespace) -> dict[str, tuple[list[str], list[int]]]:
    """Return config name -> (overrides, seeds)."""
    names = ['baseline'] + [n for n in args.configs.split(',') if n and n != 'baseline']
    plan = {}
    for name in names:
        if name == 'combined':
            overrides = combined_overrides(args.combined.split(','))
        elif name in CONFIGS:
            overrides = CONFIGS[name]
        else:
            raise SystemExit(f'error: unknown config {name!r}; known: {", ".join(CONFIGS)}, combined')
        several = name in ('baseline', 'combined') or args.all_seeds
        plan[name] = (overrides, args.seeds if several else args.seeds[:1])
    for item in args.extra_combined:
        name, _, members = item.partition('=')
        if not name or not members or name in plan:
            raise SystemExit(f'error: invalid --extra-combined {item!r}; write NAME=CONFIG,CONFIG,... with a new NAME')
        plan[name] = (combined_overrides(members.split(',')), args.seeds if args.all_seeds else args.seeds[:1])
    return plan


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if 'TIKTOKEN_CACHE_DIR' not in os.environ and TIKTOKEN_CACHE.is_dir():
        os.environ['TIKTOKEN_CACHE_DIR'] = str(TIKTOKEN_CACHE)
    command = shlex.join(['python', 'bench/speedups.py', *(sys.argv[1:] if argv is None else argv)])
    data = prepare_data(args.inputs, args.data_root, args.seq_len, args.val_fraction, args.convert_workers)
    curves: dict[str, list[Curve]] = {}
    for name, (overrides, seeds) in config_plan(args).items():
        for seed in seeds:
            run_dir = args.data_root / 'runs' / f'{name}-s{seed}'
            overrides_of_run = [*run_overrides(args, data, run_dir, seed), *overrides]
            if args.reuse and finished_before(run_dir, overrides_of_run, args.budget_tokens):
                wall = f'reused from {run_dir}'
            else:
                wall = f'{train(overrides_of_run, run_dir):.0f} s with start-up and evals'
            curve = read_curve(run_dir / 'metrics.jsonl')
            if not curve.losses:
                raise SystemExit(f'error: {run_dir}/metrics.jsonl has no val loss; see {run_dir}/train.log')
            curves.setdefault(name, []).append(curve)
            print(f'{name} seed {seed}: final val loss {curve.losses[-1]:.4f} after {curve.tokens[-1]:,.0f} '
                  f'tokens, {curve.seconds[-1]:.0f} s training ({wall})', flush=True)
    target, rows = summarize(curves)
    write_table(args.out, command, target, rows, args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
