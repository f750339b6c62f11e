"""Charts from a real run's metrics file: the extracted series, the PNG files, and a comparison of runs."""

import json
import shutil
from pathlib import Path

import pytest

from gpt2_composer.plot import extract_series, main, plot_runs, read_metrics, tokens_at
from tiny_run import STEPS, tiny_run

TOKENS_PER_STEP = 8 * 64  # global_train_batch_size * block_size of the tiny run


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


def test_series_follow_console_steps(run_dir):
    metrics = read_metrics(str(run_dir / 'metrics.jsonl'))
    series = extract_series(metrics)
    loss = series['train_loss']
    assert loss.steps == list(range(1, STEPS + 1))
    assert loss.values[0] == pytest.approx(metrics['loss/train/total'][0])
    assert loss.values[0] > 10.0  # ln(50257) = 10.82 at init
    assert loss.tokens == [step * TOKENS_PER_STEP for step in loss.steps]
    assert series['val_loss'].steps == [3, 6]
    assert series['lr/group0'].steps == list(range(1, STEPS + 1))
    assert series['lr/group0'].values[0] == pytest.approx(3e-3 / 6)
    assert 'lr/group1' in series
    # SpeedMonitor needs speed_window + 1 timestamps, so with speed_window=2 its first value is at step 3.
    assert series['tokens_per_sec'].steps == [3, 4, 5, 6]
    assert all(value > 0 for value in series['tokens_per_sec'].values)
    assert series['mfu'].steps == [3, 4, 5, 6]
    assert series['mfu_console'].steps == list(range(1, STEPS + 1))
    assert series['gpu_memory_peak_allocated_gb'].values == []  # a CPU run


def test_last_value_for_step_wins(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    records = [{'step': 0, 'time/token': 0}, {'step': 1, 'time/token': 100}, {'step': 0, 'loss/train/total': 9.0},
               {'step': 0, 'loss/train/total': 8.0}, {'step': 2, 'time/token': 200}]
    path.write_text('\n'.join(json.dumps(record) for record in records) + '\n{"step": 3, "loss')  # torn last line
    with pytest.warns(UserWarning, match='skipped 1 line'):
        metrics = read_metrics(str(path))
    assert metrics['loss/train/total'] == {0: 8.0}
    assert tokens_at(metrics, [1, 2, 4]) == [100.0, 200.0, 400.0]  # step 4 extrapolated at 100 per step


def test_gpu_extremes_merged_across_ranks(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    records = [{'step': 1, 'time/token': 10, 'max_gpu_power_usage_W_rank_0': 300.0},
               {'step': 2, 'time/token': 20, 'max_gpu_power_usage_W_rank_5': 310.0, 'min_gpu_temperature_C_rank_2': 60}]
    path.write_text('\n'.join(json.dumps(record) for record in records))
    series = extract_series(read_metrics(str(path)))
    assert series['gpu/max_gpu_power_usage_W'].steps == [1, 2]
    assert series['gpu/max_gpu_power_usage_W'].values == [300.0, 310.0]
    assert series['gpu/min_gpu_temperature_C'].values == [60.0]


def test_one_run_writes_charts(run_dir, tmp_path):
    written = plot_runs([str(run_dir)], str(tmp_path / 'plots'))
    names = sorted(Path(path).name for path in written)
    assert names == ['loss.png', 'lr.png', 'mfu.png', 'system.png', 'throughput.png']
    for path in written:
        data = Path(path).read_bytes()
        assert data.startswith(b'\x89PNG')
        assert len(data) > 10_000


def test_two_runs_write_comparison(run_dir, tmp_path):
    other = tmp_path / 'other-run'
    other.mkdir()
    shutil.copy(run_dir / 'metrics.jsonl', other / 'metrics.jsonl')
    out = tmp_path / 'plots'
    assert main([str(run_dir), str(other / 'metrics.jsonl'), '--out', str(out)]) == 0
    assert (out / 'compare.png').stat().st_size > 10_000
    assert (out / 'tiny-gpt2-run' / 'loss.png').is_file()
    assert (out / 'other-run' / 'mfu.png').is_file()


def test_missing_metrics_file_is_clear_error(tmp_path, capsys):
    assert main([str(tmp_path), '--out', str(tmp_path / 'plots')]) == 2
    assert f'No metrics file at {tmp_path}/metrics.jsonl' in capsys.readouterr().err
