"""A wandb failure warns and turns wandb off; training code never sees the exception."""

from types import SimpleNamespace

import pytest
import wandb

from gpt2_composer.callbacks import build_wandb_logger


def failing(*args, **kwargs):
    raise RuntimeError('wandb service crashed')


def test_init_failure_disables_wandb(monkeypatch, tmp_path):
    monkeypatch.setattr(wandb, 'init', failing)
    logger = build_wandb_logger('gpt2-composer', None, 'offline', 'run-a', str(tmp_path))
    with pytest.warns(UserWarning, match='wandb failed and is off for the rest of this run: RuntimeError'):
        logger.init(SimpleNamespace(run_name='run-a'), None)
    assert logger._enabled is False
    logger.log_metrics({'loss/train/total': 1.0}, step=1)  # a no-op now, and no exception


def test_log_failure_disables_wandb(monkeypatch, tmp_path):
    monkeypatch.setattr(wandb, 'log', failing)
    logger = build_wandb_logger('gpt2-composer', None, 'offline', 'run-b', str(tmp_path))
    assert logger._enabled is True
    with pytest.warns(UserWarning, match='wandb service crashed'):
        logger.log_metrics({'loss/train/total': 1.0}, step=1)
    assert logger._enabled is False


def test_offline_mode_without_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv('WANDB_API_KEY', raising=False)
    monkeypatch.setenv('NETRC', str(tmp_path / 'no-netrc'))
    monkeypatch.setenv('HOME', str(tmp_path))
    logger = build_wandb_logger('gpt2-composer', None, 'auto', 'run-c', str(tmp_path))
    assert logger._init_kwargs['mode'] == 'offline'
    assert logger._init_kwargs['id'] == 'run-c'
