"""GPU check: GPT-2 124M at T=1024 on one GPU through the real recipe, tokens/s and MFU per setting.

Runs `yamls/gpt2-124m.yaml` (FSDP v1, amp_bf16, SDPA attention) for a few steps at several
micro-batch sizes, with `torch.compile` off and on, on synthetic tokens, and prints the tokens per
second and MFU that Composer's own SpeedMonitor logs (MFU against the GPU's dense bf16 peak from
Composer's table). One call, sized to finish in under 5 minutes on an A100/H100-class GPU:

    python bench/gpu_check.py --json gpu_check.json

`--smoke` runs the same code path on the CPU with a tiny model and fp32, without FSDP, to check the
script itself where no GPU is available.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from composer.loggers import LoggerDestination  # noqa: E402
from streaming import MDSWriter  # noqa: E402

from gpt2_composer.config import load_config  # noqa: E402
from gpt2_composer.train import build_trainer  # noqa: E402

KEYS = ('throughput/device/tokens_per_sec', 'throughput/device/mfu', 'throughput/device/flops_per_sec')


class LastValues(LoggerDestination):
    """Keep the last logged value of each metric in memory."""

    def __init__(self):
        self.values: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        for key, value in metrics.items():
            if key in KEYS or key.startswith('memory/peak'):
                self.values[key] = float(value)


def write_synthetic_dataset(root: Path, samples: int, seq_len: int) -> None:
    """Write random GPT-2 token ids as an MDS dataset with the layout convert/owt_to_mds.py produces."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (('train', samples), ('val', 8)):
        with MDSWriter(out=str(root / split), columns={'tokens': f'ndarray:uint16:{seq_len + 1}'}) as writer:
            for _ in range(count):
                writer.write({'tokens': rng.integers(0, 50257, seq_len + 1, dtype=np.uint16)})
        splits[split] = {'documents': count, 'empty_documents': 0, 'tokens': count * seq_len + 1,
                         'samples': count, 'dropped_tokens': 0}
    stats = {'format_version': 1, 'tokenizer': 'synthetic', 'vocab_size': 50257, 'eot_id': 50256,
             'dtype': 'uint16', 'column': 'tokens', 'seq_len': seq_len, 'sample_len': seq_len + 1,
             'sources': ['synthetic'], 'val_fraction': 0.0, 'seed': 0, 'splits': splits}
    (root / 'stats.json').write_text(json.dumps(stats))


def run_setting(recipe: str, overrides: list[str]) -> dict[str, float]:
    config = load_config(recipe, overrides)
    trainer = build_trainer(config)
    values = LastValues()
    trainer.logger.destinations = (*trainer.logger.destinations, values)
    start = time.perf_counter()
    trainer.fit()
    values.values['wall_seconds'] = time.perf_counter() - start
    trainer.close()
    if torch.cuda.is_available():
        values.values['max_memory_allocated_gib'] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    return values.values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--micro-batches', type=int, nargs='+', default=[8, 16, 32])
    parser.add_argument('--compile-micro-batches', type=int, nargs='*', default=[16],
                        help='micro-batch sizes to rerun with torch.compile on')
    parser.add_argument('--steps', type=int, default=12, help='optimizer steps per setting (SpeedMonitor window 5)')
    parser.add_argument('--smoke', action='store_true', help='tiny CPU run of the same path, to test the script')
    parser.add_argument('--json', help='also write the results to this file')
    args = parser.parse_args(argv)

    seq_len = 64 if args.smoke else 1024
    common = ['wandb.enabled=false', 'save_folder=null', 'autoresume=false', 'metrics_file=null', 'eval_interval=100000ba',
              'eval_train_split=false', 'speed_window=5', 'scheduler.warmup=2ba', 'log_interval=4',
              'data.num_workers=2', f'max_duration={args.steps}ba']
    if args.smoke:
        common += ['model.n_layer=2', 'model.n_head=2', 'model.n_embd=64', f'model.block_size={seq_len}',
                   'precision=fp32', 'device=cpu', 'fsdp=null', 'gpu_flops_available=1e11', 'data.num_workers=0']
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'
    print(f'device: {device}, torch {torch.__version__}', flush=True)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'synthetic'
        write_synthetic_dataset(root, samples=4096 if not args.smoke else 256, seq_len=seq_len)
        settings = [(micro, False) for micro in args.micro_batches]
        if not args.smoke:  # inductor's CPU compile of even a tiny model takes minutes on 2 cores
            settings += [(micro, True) for micro in args.compile_micro_batches]
        for micro, compiled in settings:
            overrides = [*common, f'data.root={root}', f'device_train_microbatch_size={micro}',
                         f'global_train_batch_size={micro * 2}', f'device_eval_batch_size={micro}',
                         f'compile={str(compiled).lower()}']
            try:
                values = run_setting('yamls/gpt2-124m.yaml', overrides)
            except torch.cuda.OutOfMemoryError:
                values = {'error': 'out of memory'}
            row = {'micro_batch': micro, 'compile': compiled, **values}
            results.append(row)
            mfu = values.get('throughput/device/mfu', float('nan'))
            rate = values.get('throughput/device/tokens_per_sec', float('nan'))
            print(f'micro {micro:3d} compile {compiled!s:5}: {rate:12,.0f} tokens/s/device, mfu {mfu * 100:6.2f}%',
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({'device': device, 'results': results}, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
