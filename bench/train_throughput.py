"""Training throughput: Composer's Trainer against a plain PyTorch loop, side by side in one invocation.

Both loops train the same GPT (same init, same seed), on the same streaming dataloader, with the same
AdamW groups, learning-rate schedule, gradient clipping at 1.0 and micro-batching, and the timings
skip the first `--warmup` steps. The script starts each run as a fresh Python process, so neither
loop inherits the other's heap, threads or dataloader workers. The order alternates between repeats.
The Composer run uses the full recipe path (`build_trainer`), with its monitors and console line.
Evaluation, checkpoints and wandb are off in both, because the plain loop has none.

    python bench/train_throughput.py --data-root data/pydoc --steps 30 --repeats 3

It also prints the achieved FLOP/s of a step against this CPU's matmul peak (fp32 and bf16), which
is what MFU divides by.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from composer.core import Callback, State  # noqa: E402
from composer.loggers import Logger  # noqa: E402

from gpt2_composer.composer_model import ComposerGPT, tokens_in_batch  # noqa: E402
from gpt2_composer.config import load_config  # noqa: E402
from gpt2_composer.data import build_dataloader  # noqa: E402
from gpt2_composer.flops import flops_per_token, measure_matmul_peak  # noqa: E402
from gpt2_composer.malloc import keep_freed_memory  # noqa: E402
from gpt2_composer.optim import build_optimizer, build_scheduler  # noqa: E402
from gpt2_composer.train import build_trainer  # noqa: E402


def resident_mib() -> float:
    """This process's resident size in MiB now (Linux; NaN elsewhere)."""
    try:
        pages = int(Path('/proc/self/statm').read_text().split()[1])
    except OSError:
        return float('nan')
    return pages * os.sysconf('SC_PAGE_SIZE') / 2**20


class StepLog:
    """Wall time, minor page faults, system time and resident size at the end of every optimizer step."""

    def __init__(self):
        self.rows: list[tuple[float, int, float, float]] = []

    def mark(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.rows.append((time.perf_counter(), usage.ru_minflt, usage.ru_stime, resident_mib()))

    def seconds_after(self, warmup: int) -> float:
        """Wall time from the end of step `warmup` to the end of the last step."""
        return self.rows[-1][0] - self.rows[warmup - 1][0]

    def print_steps(self) -> None:
        """Print one line per step to stderr: a step that grows the heap shows as ~100k faults."""
        for step in range(1, len(self.rows)):
            (now, faults, system, rss), (before, faults_before, system_before, _) = self.rows[step], self.rows[step - 1]
            print(f'step {step + 1:3d}: {1000 * (now - before):7.1f} ms, {faults - faults_before:7d} minor faults, '
                  f'{system - system_before:5.2f} s system, RSS {rss:7,.0f} MiB', file=sys.stderr)


class StepTimes(Callback):
    """Mark a `StepLog` at the end of every optimizer step."""

    def __init__(self, log: StepLog):
        self.log = log

    def batch_end(self, state: State, logger: Logger) -> None:
        self.log.mark()


def recipe(args: argparse.Namespace, total_steps: int):
    overrides = [
        f'data.root={args.data_root}', 'data.num_workers=1', f'max_duration={total_steps}ba',
        'scheduler.warmup=5ba', 'eval_interval=100000ba', 'eval_train_split=false', 'save_folder=null',
        'metrics_file=null', 'wandb.enabled=false', f'log_interval={10**6}', *args.overrides,
    ]
    return load_config(args.recipe, overrides)


def time_composer(args: argparse.Namespace, steps: StepLog) -> float:
    """Return tokens per second of the Composer Trainer over the timed steps."""
    total = args.warmup + args.steps
    config = recipe(args, total)
    trainer = build_trainer(config)
    trainer.state.callbacks.append(StepTimes(steps))
    trainer.fit()
    batch = config.global_train_batch_size * config.model.block_size
    trainer.close()
    return batch * args.steps / steps.seconds_after(args.warmup)


def time_plain_loop(args: argparse.Namespace, steps: StepLog) -> float:
    """Return tokens per second of a hand-written loop doing the same work as the Trainer."""
    total = args.warmup + args.steps
    config = recipe(args, total)
    if config.keep_freed_memory:
        keep_freed_memory()  # as build_trainer does for the Composer loop
    torch.manual_seed(config.seed)
    model = ComposerGPT(config.model)
    optimizer = build_optimizer(model, config.optimizer, 'cpu')
    schedule = build_scheduler(config.scheduler, config.optimizer.lr, config.max_duration)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.multiplier)
    loader = build_dataloader(config.data, 'train', config.global_train_batch_size, shuffle=True).dataloader
    micro = config.device_train_microbatch_size
    tokens, step = 0, 0
    while step < total:
        for batch in loader:
            parts = [{'input_ids': rows} for rows in batch['input_ids'].split(micro)]
            for part in parts:
                loss = model.loss(model(part), part) * part['input_ids'].shape[0] / batch['input_ids'].shape[0]
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss.item()  # the Trainer also brings the loss to the host every step
            steps.mark()
            if step >= args.warmup:
                tokens += tokens_in_batch(batch)
            step += 1
            if step == total:
                break
    return tokens / steps.seconds_after(args.warmup)


LOOPS = {'composer': time_composer, 'plain': time_plain_loop}


def time_in_child(name: str, argv: list[str]) -> tuple[float, float]:
    """Run one loop in a fresh interpreter (`--only NAME`); return its tokens per second and peak RSS in MiB."""
    command = [sys.executable, __file__, *argv, '--only', name]
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    rate, peak_mib = output.strip().splitlines()[-1].split()
    return float(rate), float(peak_mib)


def step_flops(args: argparse.Namespace) -> float:
    config = recipe(args, 1)
    model = ComposerGPT(config.model)
    return config.global_train_batch_size * config.model.block_size * flops_per_token(model.model,
                                                                                      config.model.block_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--recipe', default='yamls/gpt2-cpu.yaml')
    parser.add_argument('--data-root', required=True, help='an MDS dataset from convert/owt_to_mds.py')
    parser.add_argument('--steps', type=int, default=30, help='timed optimizer steps per run')
    parser.add_argument('--warmup', type=int, default=5, help='untimed steps before the timed ones')
    parser.add_argument('--repeats', type=int, default=3, help='runs of each loop, alternating the order')
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument('--only', choices=LOOPS,
                        help='time one loop in this process and print its tokens/s and peak RSS in MiB; the '
                        'script starts each run this way')
    parser.add_argument('--per-step', action='store_true',
                        help='each run also prints every step: time, page faults, system time, resident size')
    parser.add_argument('overrides', nargs='*', help='recipe overrides, key=value')
    args = parser.parse_args(argv)
    if args.only:
        steps = StepLog()
        rate = LOOPS[args.only](args, steps)
        if args.per_step:
            steps.print_steps()
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        print(rate, peak_mib)
        return 0

    child_argv = ['--recipe', args.recipe, '--data-root', args.data_root, '--steps', str(args.steps),
                  '--warmup', str(args.warmup), *(['--per-step'] if args.per_step else []), *args.overrides]
    rates = {'composer': [], 'plain': []}
    peaks_mib = {'composer': [], 'plain': []}
    for repeat in range(args.repeats):
        order = ['composer', 'plain']
        if repeat % 2:
            order.reverse()  # alternate which loop runs first, so drift in machine speed cancels
        for name in order:
            rate, peak_mib = time_in_child(name, child_argv)
            rates[name].append(rate)
            peaks_mib[name].append(peak_mib)
            print(f'repeat {repeat}: {name:8s} {rate:9.1f} tokens/s, peak RSS {peak_mib:6,.0f} MiB', flush=True)

    composer_rates, plain_rates = rates['composer'], rates['plain']
    ratios = [c / p for c, p in zip(composer_rates, plain_rates)]
    flops = step_flops(args) / (recipe(args, 1).global_train_batch_size * recipe(args, 1).model.block_size)
    peaks = {name: measure_matmul_peak(dtype, seconds=2.0) for name, dtype in
             (('fp32', torch.float32), ('bf16', torch.bfloat16))}
    composer_flops = statistics.median(composer_rates) * flops
    result = {
        'composer_tokens_per_sec': composer_rates,
        'plain_tokens_per_sec': plain_rates,
        'composer_peak_rss_mib': peaks_mib['composer'],
        'plain_peak_rss_mib': peaks_mib['plain'],
        'ratio': ratios,
        'ratio_median': statistics.median(ratios),
        'flops_per_token': flops,
        'peak_flops': peaks,
        'composer_flops_per_sec': composer_flops,
        'mfu_vs_fp32_peak': composer_flops / peaks['fp32'],
        'mfu_vs_bf16_peak': composer_flops / peaks['bf16'],
        'threads': torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
