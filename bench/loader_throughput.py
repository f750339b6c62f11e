"""Loading throughput: tokens per second the streaming loader delivers, against what training consumes.

The loader is the one training uses (`build_dataloader`: StreamingDataset over local MDS shards,
DataLoader workers, collation to int64 tensors). It is drained for `--seconds` with no model attached.
Consumption is measured on the same machine: tokens per second of forward, backward and AdamW steps
of the recipe's model on one batch. The data path is never the bottleneck when the ratio is large.

    python bench/loader_throughput.py --data-root data/pydoc --seconds 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2_composer.composer_model import ComposerGPT, tokens_in_batch  # noqa: E402
from gpt2_composer.config import load_config  # noqa: E402
from gpt2_composer.data import build_dataloader  # noqa: E402
from gpt2_composer.optim import build_optimizer  # noqa: E402


def loader_rate(config, seconds: float) -> float:
    """Drain the train loader (epoch after epoch) for `seconds`; return tokens per second delivered."""
    loader = build_dataloader(config.data, 'train', config.global_train_batch_size, shuffle=True).dataloader
    tokens = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in loader:
            tokens += tokens_in_batch(batch)
            if time.perf_counter() - start >= seconds:
                break
    return tokens / (time.perf_counter() - start)


def training_rate(config, steps: int = 4) -> float:
    """Return tokens per second that training the recipe's model consumes, from a few optimizer steps."""
    model = ComposerGPT(config.model)
    optimizer = build_optimizer(model, config.optimizer, 'cpu')
    tokens = torch.randint(0, config.model.vocab_size, (config.global_train_batch_size, config.model.block_size + 1))
    batch = {'input_ids': tokens}
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()  # step 0 warms up allocators and kernels
        model.loss(model(batch), batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * tokens_in_batch(batch) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--recipe', default='yamls/gpt2-cpu.yaml')
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--seconds', type=float, default=20.0)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument('overrides', nargs='*', help='recipe overrides, key=value')
    args = parser.parse_args(argv)

    config = load_config(args.recipe, [f'data.root={args.data_root}', *args.overrides])
    consumed = [training_rate(config) for _ in range(args.repeats)]
    delivered = [loader_rate(config, args.seconds) for _ in range(args.repeats)]
    result = {
        'loader_tokens_per_sec': delivered,
        'training_tokens_per_sec': consumed,
        'ratio_median': statistics.median(delivered) / statistics.median(consumed),
        'num_workers': config.data.num_workers,
        'batch_size': config.global_train_batch_size,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
