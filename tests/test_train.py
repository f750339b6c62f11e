"""End to end: convert the built-in sample, train the CPU recipe, and parse what it prints and logs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convert.owt_to_mds import convert_to_mds
from gpt2_composer.callbacks import EVAL_PATTERN, ITER_PATTERN

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def pydoc_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('data') / 'pydoc'
    convert_to_mds(['builtin:pydoc-topics'], str(root), seq_len=64, progress=False)
    return root


def tiny_run_overrides(root: Path, out: Path, steps: int) -> list[str]:
    """Overrides that shrink yamls/gpt2-cpu.yaml to a few seconds while keeping every component on."""
    return [
        f'data.root={root}', 'data.num_workers=0', f'run_name=e2e',
        'model.n_layer=2', 'model.n_head=2', 'model.n_embd=64', 'model.block_size=64',
        'global_train_batch_size=8', 'device_train_microbatch_size=4', 'device_eval_batch_size=4',
        f'max_duration={steps}ba', 'scheduler.warmup=5ba', 'optimizer.lr=3e-3',
        'eval_interval=20ba', 'eval_batches=2', 'log_interval=10', 'speed_window=5',
        f'save_folder={out}/checkpoints', 'save_interval=20ba', f'metrics_file={out}/metrics.jsonl',
        'wandb.mode=offline', f'wandb.dir={out}/wandb',
    ]


def run_training(overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, 'WANDB_SILENT': 'true', 'PYTHONPATH': str(REPO)}
    env.pop('WANDB_API_KEY', None)
    command = [sys.executable, '-m', 'gpt2_composer.train', str(REPO / 'yamls/gpt2-cpu.yaml'), *overrides]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def short_run(pydoc_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp('run')
    result = run_training(tiny_run_overrides(pydoc_dataset, out, steps=40), cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, out


def test_console_line_every_log_interval(short_run):
    result, _ = short_run
    matches = [ITER_PATTERN.match(line) for line in result.stdout.splitlines()]
    steps = [int(m.group(1)) for m in matches if m]
    assert steps == [1, 10, 20, 30, 40]


def test_console_loss_falls(short_run):
    result, _ = short_run
    losses = [float(m.group(2)) for m in map(ITER_PATTERN.match, result.stdout.splitlines()) if m]
    assert losses[0] > 10.0  # ln(50257) = 10.82 at init
    assert losses[-1] < losses[0] - 2.0


def test_console_time_and_mfu_plausible(short_run):
    result, _ = short_run
    for match in filter(None, map(ITER_PATTERN.match, result.stdout.splitlines())):
        assert float(match.group(3)) > 0
        assert 0 < float(match.group(4)) < 100


def test_eval_line_after_each_eval(short_run):
    result, _ = short_run
    matches = [m for m in map(EVAL_PATTERN.match, result.stdout.splitlines()) if m]
    assert [int(m.group(1)) for m in matches] == [20, 40]
    for match in matches:
        assert 0 < float(match.group(2)) < 11
        assert 0 < float(match.group(3)) < 11


def _metrics(out: Path) -> dict[str, dict[int, float]]:
    series: dict[str, dict[int, float]] = {}
    for line in (out / 'metrics.jsonl').read_text().splitlines():
        record = json.loads(line)
        step = record.pop('step')
        for key, value in record.items():
            series.setdefault(key, {})[step] = value
    return series


def test_metrics_file_has_composer_keys(short_run):
    _, out = short_run
    series = _metrics(out)
    for key in ('loss/train/total', 'lr-AdamW/group0', 'throughput/tokens_per_sec', 'throughput/device/mfu',
                'metrics/val/LanguageCrossEntropy', 'metrics/train_eval/LanguageCrossEntropy',
                'throughput/device/mfu_smoothed', 'throughput/step_time_ms', 'cpu_percentage'):
        assert key in series, key
    assert series['throughput/device/tokens_per_sec'][40] > 0


def test_lr_above_zero_at_first_step_of_run(short_run):
    _, out = short_run
    lr = _metrics(out)['lr-AdamW/group0']
    first = lr[min(lr)]
    assert first == pytest.approx(3e-3 / 6, rel=1e-6)  # (0 + 1) / (warmup + 1) of the peak


def test_console_loss_equals_logged_loss(short_run):
    result, out = short_run
    logged = _metrics(out)['loss/train/total']
    for match in filter(None, map(ITER_PATTERN.match, result.stdout.splitlines())):
        step = int(match.group(1))
        # Composer logs a step's loss under the batch index before it advances: step N is key N - 1.
        assert float(match.group(2)) == pytest.approx(logged[step - 1], abs=5e-5)


def test_wandb_offline_run_written(short_run):
    _, out = short_run
    runs = list((out / 'wandb' / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1
    assert list(runs[0].glob('*.wandb'))


def test_checkpoints_saved(short_run):
    _, out = short_run
    names = sorted(path.name for path in (out / 'checkpoints').iterdir())
    assert 'ep0-ba20-rank0.pt' in names
    assert 'ep0-ba40-rank0.pt' in names
    checkpoint = torch.load(out / 'checkpoints' / 'ep0-ba40-rank0.pt', map_location='cpu', weights_only=False)
    recipe = checkpoint['state']['callbacks']['RecipeRecord']['config']
    assert recipe['model']['n_layer'] == 2
    assert recipe['model']['n_embd'] == 64
    assert checkpoint['state']['timestamp']['Timestamp']['batch'] == 40


def test_missing_data_root_is_clear_error(tmp_path):
    result = run_training([f'data.root={tmp_path}/nothing', 'wandb.enabled=false'], cwd=tmp_path)
    assert result.returncode == 2
    assert f"data.root='{tmp_path}/nothing' does not exist" in result.stderr
    assert 'convert/owt_to_mds.py' in result.stderr


def test_metrics_file_of_earlier_run_moved(tmp_path):
    from gpt2_composer.callbacks import MetricsFile

    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"step": 0, "loss/train/total": 10.0}\n')
    fresh = MetricsFile(str(path), resuming=False)
    fresh.init(None, None)
    fresh.log_metrics({'loss/train/total': 9.0}, step=0)
    fresh.close(None, None)
    assert (tmp_path / 'metrics.jsonl.1').read_text() == '{"step": 0, "loss/train/total": 10.0}\n'
    assert path.read_text() == '{"step": 0, "loss/train/total": 9.0}\n'

    resumed = MetricsFile(str(path), resuming=True)
    resumed.init(None, None)
    resumed.log_metrics({'loss/train/total': 8.0}, step=1)
    resumed.close(None, None)
    assert path.read_text().splitlines() == ['{"step": 0, "loss/train/total": 9.0}',
                                             '{"step": 1, "loss/train/total": 8.0}']
    assert not (tmp_path / 'metrics.jsonl.2').exists()


def test_eval_batches_capped_at_split_size(caplog):
    from gpt2_composer.train import eval_batches_available

    with caplog.at_level('INFO', logger='gpt2_composer'):
        assert eval_batches_available(8, [0, 1], 'val') == 2
    assert 'eval_batches=8, but the val split has 2 batches per rank; each eval reads all 2.' in caplog.text
    assert eval_batches_available(8, range(20), 'val') == 8
    assert eval_batches_available(8, iter(range(3)), 'val') == 8  # no length: left to Composer
