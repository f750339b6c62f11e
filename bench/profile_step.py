"""Profile training steps through Composer: where the time of one step goes.

    python bench/profile_step.py --data-root data/pydoc --steps 5

Trains a recipe (`yamls/gpt2-cpu.yaml` by default) with the same Trainer as `gpt2_composer.train`,
skips `--warmup` steps, then runs `--steps` steps under torch.profiler and prints:

1. the wall time of a step split into the model's forward, the loss, the backward, gradient
   clipping, the optimizer step and zero_grad, and the rest: loading the batch, Composer's event
   loop and the callbacks. The rest is what the framework and this project add to a plain loop;
2. the operators with the most self time over the profiled steps.

`--trace FILE` also writes a Chrome trace, for chrome://tracing or https://ui.perfetto.dev.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from composer.core import Callback, State  # noqa: E402
from composer.loggers import Logger  # noqa: E402

import gpt2_composer.clipping  # noqa: E402
from gpt2_composer.composer_model import ComposerGPT  # noqa: E402
from gpt2_composer.config import load_config  # noqa: E402
from gpt2_composer.train import build_trainer  # noqa: E402

# Region label -> what it covers. The optimizer's own labels come from torch.optim.
REGIONS = {
    'forward': 'ComposerGPT.forward: the model up to the logits',
    'loss': 'ComposerGPT.loss: cross-entropy over the vocabulary',
    'backward': 'loss.backward()',
    'clip_grad_norm': 'global gradient norm and clipping',
    'optimizer.step': 'the optimizer update (torch.optim label Optimizer.step#..., less the regions inside)',
    'optimizer.zero_grad': 'zero_grad (torch.optim label Optimizer.zero_grad#...)',
}


def labelled(label: str, function):
    """Wrap `function` so that each call shows in the profile as the region `label`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return function(*args, **kwargs)

    return wrapper


def label_regions() -> None:
    """Put the step's parts into named profiler regions. Only this process's classes are patched."""
    ComposerGPT.forward = labelled('forward', ComposerGPT.forward)
    ComposerGPT.loss = labelled('loss', ComposerGPT.loss)
    torch.Tensor.backward = labelled('backward', torch.Tensor.backward)
    gpt2_composer.clipping.clip_grad_norm = labelled('clip_grad_norm', gpt2_composer.clipping.clip_grad_norm)


class ProfileSteps(Callback):
    """Profile the steps after the first `warmup`, `steps` of them, timed from batch end to batch end."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps
        self.profiler = profile(activities=[ProfilerActivity.CPU] +
                                ([ProfilerActivity.CUDA] if torch.cuda.is_available() else []))
        self.start = self.end = 0.0

    def batch_end(self, state: State, logger: Logger) -> None:
        step = state.timestamp.batch.value
        if step == self.warmup:
            self.profiler.__enter__()
            self.start = time.perf_counter()
        elif step == self.warmup + self.steps:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.end = time.perf_counter()
            self.profiler.__exit__(None, None, None)


def region_of(name: str) -> str | None:
    """Return the REGIONS key that a profiler event name belongs to, or None."""
    for region in REGIONS:
        if name == region or name.startswith(region.replace('optimizer.', 'Optimizer.') + '#'):
            return region
    return None


def region_times(events, steps: int) -> dict[str, float]:
    """Return milliseconds per step of each region in REGIONS, each without the regions inside it.

    Composer runs forward and backward inside `optimizer.step(closure)`, so the optimizer's own time
    is its event's time less the labelled regions nested in it.
    """

    def nested(event) -> float:
        return sum(child.cpu_time_total if region_of(child.name) else nested(child) for child in event.cpu_children)

    totals = {region: 0.0 for region in REGIONS}
    for event in events:
        region = region_of(event.name)
        if region:
            totals[region] += (event.cpu_time_total - nested(event)) / 1000 / steps  # microseconds -> ms
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--recipe', default='yamls/gpt2-cpu.yaml')
    parser.add_argument('--data-root', required=True, help='an MDS dataset from convert/owt_to_mds.py')
    parser.add_argument('--warmup', type=int, default=3, help='steps before profiling starts')
    parser.add_argument('--steps', type=int, default=5, help='profiled optimizer steps')
    parser.add_argument('--top', type=int, default=15, help='operators to list')
    parser.add_argument('--trace', help='also write a Chrome trace to this file')
    parser.add_argument('overrides', nargs='*', help='recipe overrides, key=value')
    args = parser.parse_args(argv)

    label_regions()
    config = load_config(args.recipe, [
        f'data.root={args.data_root}', f'max_duration={args.warmup + args.steps}ba', 'scheduler.warmup=1ba',
        'eval_interval=100000ba', 'eval_train_split=false', 'save_folder=null', 'metrics_file=null',
        'wandb.enabled=false', *args.overrides,
    ])
    trainer = build_trainer(config)
    profiler = ProfileSteps(args.warmup, args.steps)
    trainer.state.callbacks.append(profiler)
    trainer.fit()
    trainer.close()

    step_ms = (profiler.end - profiler.start) * 1000 / args.steps
    regions = region_times(profiler.profiler.events(), args.steps)
    print(f'\n{args.steps} profiled steps of {args.recipe}, {torch.get_num_threads()} threads: '
          f'{step_ms:.1f} ms per step (wall, under the profiler)\n')
    print(f'{"region":<22} {"ms/step":>9} {"share":>7}  what')
    for region, ms in regions.items():
        print(f'{region:<22} {ms:9.1f} {ms / step_ms:7.1%}  {REGIONS[region]}')
    rest = step_ms - sum(regions.values())
    print(f'{"rest":<22} {rest:9.1f} {rest / step_ms:7.1%}  batch loading, Composer\'s event loop, callbacks\n')
    print(profiler.profiler.key_averages().table(sort_by='self_cpu_time_total', row_limit=args.top))
    if args.trace:
        profiler.profiler.export_chrome_trace(args.trace)
        print(f'wrote {args.trace}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
