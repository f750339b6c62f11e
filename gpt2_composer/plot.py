"""Draw PNG charts of one or more runs from their `metrics.jsonl` files, offline.

    python -m gpt2_composer.plot runs/gpt2-124m --out plots/
    python -m gpt2_composer.plot runs/gpt2-124m runs/gpt2-124m-fast --out plots/compare

Every run writes `runs/RUN/metrics.jsonl` (`gpt2_composer.callbacks.MetricsFile`): one JSON object per
log call, `{"step": N, "<key>": value, ...}`. A resumed run appends to it, so the last value logged
for a step wins. The file of a running run can be plotted; a half-written last line is skipped.

For one run the charts go into OUT: loss.png (train and val loss), lr.png, throughput.png
(tokens per second), mfu.png and system.png (CPU and GPU utilisation, power, temperature, memory).
Each of the first four has two panels: against optimizer steps and against tokens seen. For two or
more runs each run's charts go into OUT/LABEL/ and compare.png overlays the runs against tokens seen,
the axis on which recipes with different batch sizes line up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Optional

import matplotlib

matplotlib.use('Agg')  # no display needed; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter, PercentFormatter  # noqa: E402

# Composer logs `loss/train/total` under the step index before the step completes, so the loss of
# optimizer step N (the console's `iter N`) is stored under N - 1. Everything else plotted here is
# logged after the step, under N.
LOSS_STEP_OFFSET = 1
# SystemMetricsMonitor names GPU metrics by the rank that has the extreme, e.g. max_gpu_power_usage_W_rank_3.
GPU_EXTREME_KEY = re.compile(r'^(min|max)_(gpu_percentage|memory_percentage|gpu_temperature_C|gpu_power_usage_W)'
                             r'_rank_\d+$')


@dataclass
class Series:
    """One curve: values at optimizer steps, with the tokens seen by each step."""

    steps: list[int] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


@dataclass
class Run:
    """The curves of one run, by name (see `SERIES_KEYS` and `extract_series`)."""

    label: str
    series: dict[str, Series]


# Chart series and the metric keys they come from.
SERIES_KEYS = {
    'train_loss': 'loss/train/total',
    'val_loss': 'metrics/val/LanguageCrossEntropy',
    'tokens_per_sec': 'throughput/tokens_per_sec',  # all devices, averaged over speed_window steps
    'mfu': 'throughput/device/mfu',  # SpeedMonitor: averaged over speed_window steps
    'mfu_console': 'throughput/device/mfu_smoothed',  # the console line's moving average
    'cpu_percentage': 'cpu_percentage',
    'cpu_memory_percent': 'cpu_memory_percent',
    'gpu_memory_peak_allocated_gb': 'memory/peak_allocated_mem',
}


def metrics_path(run: str) -> str:
    """Return the metrics file of a run folder, or `run` itself if it is a file."""
    path = os.path.join(run, 'metrics.jsonl') if os.path.isdir(run) else run
    if not os.path.isfile(path):
        raise FileNotFoundError(f'No metrics file at {path}. Pass a run folder (runs/RUN) or its metrics.jsonl; '
                                'runs write it unless metrics_file is null in the recipe.')
    return path


def read_metrics(path: str) -> dict[str, dict[int, float]]:
    """Read a metrics file into {key: {step: value}}, keeping the last value logged for a step.

    Args:
        path: a `metrics.jsonl` file.
    """
    metrics: dict[str, dict[int, float]] = {}
    skipped = 0
    with open(path, encoding='utf-8') as file:
        for line in file:
            try:
                record = json.loads(line)
                step = int(record.pop('step'))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                skipped += 1  # a line still being written by a running run, or not a metrics record
                continue
            for key, value in record.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    metrics.setdefault(key, {})[step] = float(value)
    if skipped:
        warnings.warn(f'{path}: skipped {skipped} line(s) that are not complete metrics records.')
    return metrics


def tokens_at(metrics: dict[str, dict[int, float]], steps: list[int]) -> list[float]:
    """Return the tokens seen after each of `steps` optimizer steps.

    `time/token` at step N is the count after N steps. Steps it does not cover (a metric logged
    after the run's last `time/token`) are extrapolated at the last known tokens per step.
    """
    known = metrics.get('time/token', {})
    if not known:
        return [math.nan] * len(steps)
    known_steps = np.array(sorted(known), dtype=float)
    known_tokens = np.array([known[int(step)] for step in known_steps])
    tokens = np.interp(steps, known_steps, known_tokens)
    if len(known_steps) >= 2:
        per_step = (known_tokens[-1] - known_tokens[-2]) / (known_steps[-1] - known_steps[-2])
        beyond = np.array(steps, dtype=float) > known_steps[-1]
        tokens[beyond] = known_tokens[-1] + (np.array(steps, dtype=float)[beyond] - known_steps[-1]) * per_step
    return tokens.tolist()


def _make_series(metrics: dict[str, dict[int, float]], key: str, offset: int = 0) -> Series:
    by_step = metrics.get(key, {})
    steps = [step + offset for step in sorted(by_step)]
    values = [by_step[step - offset] for step in steps]
    return Series(steps=steps, tokens=tokens_at(metrics, steps), values=values)


def extract_series(metrics: dict[str, dict[int, float]]) -> dict[str, Series]:
    """Pick the plotted curves out of a run's metrics, keyed by optimizer step as the console line is.

    Returns the names of `SERIES_KEYS`, one `lr/<group>` per optimizer parameter group (from LRMonitor's
    `lr-AdamW/group0` keys) and, on GPUs, `gpu/min_<metric>` and `gpu/max_<metric>` from
    SystemMetricsMonitor's per-rank extremes. A curve the run did not log is present and empty.
    """
    series = {name: _make_series(metrics, key, LOSS_STEP_OFFSET if name == 'train_loss' else 0)
              for name, key in SERIES_KEYS.items()}
    for key in sorted(metrics):
        if key.startswith('lr-'):
            series[f'lr/{key.split("/", 1)[-1]}'] = _make_series(metrics, key)
    gpu_keys: dict[str, list[str]] = {}
    for key in metrics:
        match = GPU_EXTREME_KEY.match(key)
        if match:
            gpu_keys.setdefault(f'gpu/{match.group(1)}_{match.group(2)}', []).append(key)
    for name, keys in sorted(gpu_keys.items()):
        # The rank in the key changes when another rank has the extreme, so merge those keys.
        merged = {step: value for key in keys for step, value in metrics[key].items()}
        series[name] = _make_series({'merged': merged, 'time/token': metrics.get('time/token', {})}, 'merged')
    return series


def load_run(path: str, label: Optional[str] = None) -> Run:
    """Read a run folder or metrics file into a Run, labelled by its folder name unless `label` is given."""
    file = metrics_path(path)
    if label is None:
        label = os.path.basename(os.path.dirname(os.path.abspath(file))) or file
    return Run(label=label, series=extract_series(read_metrics(file)))


def _plot_lines(axes, lines: list[tuple[str, Series, dict]], x_axis: str) -> None:
    """Draw (label, series, line style) tuples on axes against 'steps' or 'tokens'."""
    drawn = False
    for label, series, style in lines:
        if series.values:
            axes.plot(getattr(series, x_axis), series.values, label=label, **style)
            drawn = True
    if not drawn:
        axes.text(0.5, 0.5, 'not logged', ha='center', va='center', transform=axes.transAxes, color='gray')
        axes.set_xticks([])
        axes.set_yticks([])
    elif any(label for label, _, _ in lines):
        axes.legend(fontsize='small')
    axes.set_xlabel('step' if x_axis == 'steps' else 'tokens seen')
    if x_axis == 'tokens':
        axes.xaxis.set_major_formatter(EngFormatter())
    axes.grid(alpha=0.3)


def _save_step_and_token_chart(path: str, title: str, ylabel: str, lines: list[tuple[str, Series, dict]],
                               percent: bool = False) -> None:
    """Save a chart with two panels, the same curves against steps and against tokens seen."""
    figure, panels = plt.subplots(1, 2, figsize=(12, 4.5))
    for axes, x_axis in zip(panels, ('steps', 'tokens')):
        _plot_lines(axes, lines, x_axis)
        axes.set_ylabel(ylabel)
        if percent:
            axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_run(run: Run, out_dir: str) -> list[str]:
    """Write one run's charts into `out_dir` and return their paths.

    Args:
        run: from `load_run`.
        out_dir: created if missing; files of the same name are overwritten.
    """
    os.makedirs(out_dir, exist_ok=True)
    series = run.series
    thin = {'linewidth': 0.8}
    charts = {
        'loss.png': ('loss', 'cross-entropy (nats)', [('train (step mean)', series['train_loss'], thin),
                                                        ('val', series['val_loss'], {'marker': 'o'})], False),
        'lr.png': ('learning rate', 'lr', _lr_lines(series), False),
        'throughput.png': ('throughput, all devices', 'tokens / s',
                           [('', series['tokens_per_sec'], thin)], False),
        'mfu.png': ('MFU per device', 'MFU', [('SpeedMonitor (window mean)', series['mfu'], thin),
                                             ('console line (moving average)', series['mfu_console'], thin)], True),
    }
    paths = []
    for name, (title, ylabel, lines, percent) in charts.items():
        path = os.path.join(out_dir, name)
        _save_step_and_token_chart(path, f'{run.label}: {title}', ylabel, lines, percent)
        paths.append(path)
    paths.append(_save_system_chart(run, os.path.join(out_dir, 'system.png')))
    return paths


def _lr_lines(series: dict[str, Series]) -> list[tuple[str, Series, dict]]:
    # optim.build_optimizer puts the decayed 2-D weights in group0 and gains and biases in group1.
    # Both follow the same schedule, so lines after the first are dashed to keep them visible.
    group_names = {'group0': 'group0 (weight decay)', 'group1': 'group1 (no weight decay)'}
    lines = []
    for name, curve in series.items():
        if name.startswith('lr/'):
            group = name.split('/', 1)[1]
            style = {'linewidth': 0.8} if not lines else {'linewidth': 1.6, 'linestyle': '--'}
            lines.append((group_names.get(group, group), curve, style))
    return lines


def _save_system_chart(run: Run, path: str) -> str:
    """Save utilisation, power, temperature and memory against steps; empty panels say 'not logged'."""
    series = run.series

    def gpu(metric: str) -> list[tuple[str, Series, dict]]:
        return [(f'GPU {extreme} over ranks', series.get(f'gpu/{extreme}_{metric}', Series()), {'linewidth': 0.8})
                for extreme in ('min', 'max')]

    panels = [
        ('utilisation (%)', gpu('gpu_percentage') + [('CPU', series['cpu_percentage'], {'linewidth': 0.8})]),
        ('GPU power (W)', gpu('gpu_power_usage_W')),
        ('GPU temperature (C)', gpu('gpu_temperature_C')),
        ('memory', [('host RAM used (%)', series['cpu_memory_percent'], {'linewidth': 0.8}),
                    ('GPU peak allocated (GB, rank 0)', series['gpu_memory_peak_allocated_gb'], {'linewidth': 0.8})]),
    ]
    figure, grid = plt.subplots(2, 2, figsize=(12, 8))
    for axes, (title, lines) in zip(grid.flat, panels):
        _plot_lines(axes, lines, 'steps')
        axes.set_title(title)
        if title.startswith('utilisation'):
            axes.set_ylim(0, 105)  # a zoomed axis would turn 99.6% vs 100% into a cliff
    figure.suptitle(f'{run.label}: system')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_comparison(runs: list[Run], path: str) -> str:
    """Save one chart that overlays train loss, val loss, tokens per second and MFU of several runs.

    Args:
        runs: two or more runs from `load_run`, with distinct labels.
        path: the PNG to write; its folder is created if missing.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure, grid = plt.subplots(2, 2, figsize=(12, 8))
    panels = [('train loss', 'train_loss'), ('val loss', 'val_loss'), ('tokens / s, all devices', 'tokens_per_sec'),
              ('MFU per device (SpeedMonitor)', 'mfu')]
    for axes, (title, name) in zip(grid.flat, panels):
        lines = [(run.label, run.series[name], {'linewidth': 0.8, 'marker': 'o' if name == 'val_loss' else None})
                 for run in runs]
        _plot_lines(axes, lines, 'tokens')
        axes.set_title(title)
        if name == 'mfu':
            axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    figure.suptitle('runs compared by tokens seen')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_runs(paths: list[str], out_dir: str, labels: Optional[list[str]] = None) -> list[str]:
    """Write the charts of each run and, for two or more, compare.png; return the written paths.

    Args:
        paths: run folders or metrics files.
        out_dir: one run's charts go here; with several runs, into out_dir/LABEL/ plus out_dir/compare.png.
        labels: names for the runs in legends and folders; default the run folder names.
    """
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f'Got {len(labels)} labels for {len(paths)} runs; give one label per run.')
    runs = [load_run(path, labels[i] if labels else None) for i, path in enumerate(paths)]
    seen: dict[str, int] = {}
    for run in runs:  # runs/a/metrics.jsonl and runs/b/../a/metrics.jsonl would share a label
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f'{run.label}-{seen[run.label]}'
    if len(runs) == 1:
        return plot_run(runs[0], out_dir)
    written = []
    for run in runs:
        written += plot_run(run, os.path.join(out_dir, run.label))
    written.append(plot_comparison(runs, os.path.join(out_dir, 'compare.png')))
    return written


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Draw PNG charts from runs/RUN/metrics.jsonl, without network.')
    parser.add_argument('runs', nargs='+', help='run folders (runs/RUN) or metrics.jsonl files')
    parser.add_argument('--out', default='plots', help='folder for the PNG files (default: plots)')
    parser.add_argument('--labels', nargs='+', help='legend names, one per run (default: the run folder names)')
    args = parser.parse_args(argv)
    try:
        written = plot_runs(args.runs, args.out, args.labels)
    except (FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
