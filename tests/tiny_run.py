"""A 6-step training run of a tiny padded-vocabulary GPT, shared by the plot, sample and export tests.

The first test module that requests it trains; the others reuse the folder under pytest's base temp dir.
"""

from pathlib import Path

from convert.owt_to_mds import convert_to_mds
from test_train import run_training, tiny_run_overrides

STEPS = 6


def tiny_run(tmp_path_factory) -> Path:
    """Return the run folder (metrics.jsonl, checkpoints/ep0-ba3-rank0.pt and ep0-ba6-rank0.pt), training once."""
    out = tmp_path_factory.getbasetemp() / 'tiny-gpt2-run'
    done = out / 'done'
    if done.exists():
        return out
    data = out / 'pydoc'
    convert_to_mds(['builtin:pydoc-topics'], str(data), seq_len=64, progress=False)
    overrides = tiny_run_overrides(data, out, steps=STEPS) + [
        'model.padded_vocab_size=50304',  # 47 padded rows, which sampling must never return
        'eval_interval=3ba', 'save_interval=3ba', 'log_interval=1', 'speed_window=2', 'wandb.enabled=false',
    ]
    result = run_training(overrides, cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    done.touch()
    return out
