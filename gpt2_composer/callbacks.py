"""nanoGPT's console line, a local JSON-lines metrics file, a WandB logger that cannot stop a run,
and the release of each microbatch's logits once nothing needs them."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from typing import Any, Optional

from composer.callbacks.speed_monitor import get_gpu_flops_available
from composer.core import Callback, State
from composer.loggers import Logger, LoggerDestination, WandBLogger
from composer.utils import dist

log = logging.getLogger(__name__)

# The console formats are a tested interface: tests and plotting scripts parse them.
ITER_LINE = 'iter {step}: loss {loss:.4f}, time {ms:.2f}ms, mfu {mfu:.2f}%'
EVAL_LINE = 'step {step}: train loss {train:.4f}, val loss {val:.4f}'
ITER_PATTERN = re.compile(r'^iter (\d+): loss ([-\d.naif]+), time ([\d.]+)ms, mfu ([-\d.]+)%$')
EVAL_PATTERN = re.compile(r'^step (\d+): train loss ([\d.naif]+), val loss ([\d.naif]+)$')


class ConsoleLog(Callback):
    """Print nanoGPT's progress line on rank 0 every `log_interval` optimizer steps, and one line per eval.

    `iter N` counts completed optimizer steps (Composer's `time/batch`). `time` is the wall time of the
    last step excluding evaluation, as rank 0 measured it (Composer's `batch_wct`). It includes waiting
    for slower ranks in the gradient reduction. `loss` is the step's mean loss over all ranks and
    micro-batches. `mfu` is a moving average like nanoGPT's, 0.9 * previous + 0.1 * current, started
    after 5 steps so compilation and warm-up do not count.
    Reading these values adds no host sync: Composer already brings the loss to the host each step.

    | Key                                | Logged value                                    |
    |------------------------------------|-------------------------------------------------|
    | `throughput/step_time_ms`          | the `time` field of the console line            |
    | `throughput/device/mfu_smoothed`   | the `mfu` field, as a fraction                  |

    The loss is Composer's own `loss/train/total`; the eval line reads
    `metrics/{train,val}/LanguageCrossEntropy`.

    Args:
        log_interval: optimizer steps between lines; the first step always prints.
        flops_available: peak FLOP/s per device; None looks it up in Composer's GPU table.
    """

    def __init__(self, log_interval: int = 10, flops_available: Optional[float] = None):
        self.log_interval = log_interval
        self.flops_available = flops_available
        self.running_mfu = -1.0
        self.steps_this_process = 0
        self.eval_losses: dict[str, float] = {}

    def fit_start(self, state: State, logger: Logger) -> None:
        if self.flops_available is None:
            self.flops_available = float(get_gpu_flops_available(state))

    def batch_end(self, state: State, logger: Logger) -> None:
        self.steps_this_process += 1
        step = state.timestamp.batch.value
        seconds = state.timestamp.batch_wct.total_seconds()
        mfu = self._mfu(state, seconds)
        if self.steps_this_process >= 5:
            self.running_mfu = mfu if self.running_mfu < 0 else 0.9 * self.running_mfu + 0.1 * mfu
        shown_mfu = self.running_mfu if self.running_mfu >= 0 else mfu
        if step % self.log_interval != 0 and self.steps_this_process != 1:
            return
        loss = (state.total_loss_dict or {}).get('loss/train/total', float('nan'))
        logger.log_metrics({'throughput/step_time_ms': seconds * 1000, 'throughput/device/mfu_smoothed': shown_mfu})
        if dist.get_global_rank() == 0:
            print(ITER_LINE.format(step=step, loss=loss, ms=seconds * 1000, mfu=shown_mfu * 100), flush=True)

    def _mfu(self, state: State, seconds: float) -> float:
        model = state.model if hasattr(state.model, 'flops_per_batch') else state.model.module
        if not self.flops_available or seconds <= 0:
            return 0.0
        # Every rank gets a batch of the same shape, so the local batch gives the per-device MFU
        # without the collective that summing FLOPs across ranks would cost each step.
        device_flops = model.flops_per_batch(state.batch)
        return device_flops / seconds / self.flops_available

    def eval_end(self, state: State, logger: Logger) -> None:
        metric = state.eval_metrics.get(state.dataloader_label, {}).get('LanguageCrossEntropy')
        if metric is not None:
            self.eval_losses[state.dataloader_label] = float(metric.compute())

    def eval_after_all(self, state: State, logger: Logger) -> None:
        if 'val' not in self.eval_losses:
            return
        train = self.eval_losses.get('train_eval', (state.total_loss_dict or {}).get('loss/train/total', float('nan')))
        if dist.get_global_rank() == 0:
            print(EVAL_LINE.format(step=state.timestamp.batch.value, train=train, val=self.eval_losses['val']),
                  flush=True)
        self.eval_losses.clear()


class ReleaseOutputs(Callback):
    """Drop the Trainer's reference to a microbatch's logits once nothing needs them.

    Composer keeps `state.outputs` until the next microbatch's forward pass returns, so two
    microbatches' logits are alive at once. They are B x T x 50,257 floats: 412 MB in fp32 on the
    CPU recipe, 1.2 GB in bf16 for 124M at micro-batch 12 on a GPU. Training metrics would read the
    outputs after the backward pass. This model has none, so after the loss the autograd graph is
    the last holder, and the logits are freed when the backward pass ends, as in a plain loop. After
    an evaluation the last eval batch's logits go too, instead of lasting into the next training
    step. Composer's own `FreeOutputs` empties the outputs after every loss; this callback keeps them
    when training metrics exist. Measured on the CPU recipe (30 steps, 2 runs each): peak RSS
    3,104 to 3,114 MiB without it, 2,473 to 2,490 MiB with it.
    """

    def after_loss(self, state: State, logger: Logger) -> None:
        if not state.train_metrics:
            state.outputs = None

    def eval_end(self, state: State, logger: Logger) -> None:
        state.outputs = None


class RecipeRecord(Callback):
    """Store the run's resolved recipe in every checkpoint, so tools can rebuild the model from the file alone.

    Composer saves each callback's `state_dict` under `state['callbacks'][class name]`; sampling and
    export read `['config']['model']` from there. Loading keeps the recipe of the current run.

    Args:
        config: the resolved recipe as plain dicts and lists.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def state_dict(self) -> dict[str, Any]:
        return {'config': self.config}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state  # the relaunched run's recipe is the one in force


class MetricsFile(LoggerDestination):
    """Append every logged metric to a JSON-lines file on rank 0, one `{"step": N, key: value}` object a call.

    The plots command reads this file, so curves can be drawn without a wandb account.

    Args:
        path: the file; its folder is created.
        resuming: True when the run may continue an earlier one (autoresume or load_path): an existing
            file is then appended to, and readers keep the last value logged for a step. Otherwise an
            existing file belongs to another run and is renamed to `PATH.1` (`.2`, ...) first.
    """

    def __init__(self, path: str, resuming: bool = True):
        self.path = path
        self.resuming = resuming
        self._file = None

    def init(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if not self.resuming and os.path.exists(self.path):
            number = 1
            while os.path.exists(f'{self.path}.{number}'):
                number += 1
            os.replace(self.path, f'{self.path}.{number}')
            log.warning('%s was written by an earlier run; moved it to %s.%d so this run starts a new file',
                        self.path, self.path, number)
        self._file = open(self.path, 'a', encoding='utf-8', buffering=1)  # line-buffered

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if self._file is None:
            return
        record = {'step': step}
        for key, value in metrics.items():
            try:
                record[key] = float(value)
            except (TypeError, ValueError):
                continue  # tensors of several elements, strings: not a curve
        self._file.write(json.dumps(record) + '\n')

    def close(self, state: State, logger: Logger) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SafeWandBLogger(WandBLogger):
    """WandBLogger whose failures (no network, a full disk, a bad key) warn once and stop wandb, not training."""

    def _disable(self, error: Exception) -> None:
        if self._enabled:
            warnings.warn(f'wandb failed and is off for the rest of this run: {type(error).__name__}: {error}')
        self._enabled = False

    def init(self, state: State, logger: Logger) -> None:
        try:
            super().init(state, logger)
        except Exception as error:  # noqa: BLE001 -- any wandb failure must leave training running
            self._disable(error)
            # Rank 0 failed before Composer's broadcast of entity and project; send it so other ranks go on.
            names = ['disabled', 'disabled']
            dist.broadcast_object_list(names)
            self.entity, self.project = names

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        try:
            super().log_metrics(metrics, step)
        except Exception as error:  # noqa: BLE001
            self._disable(error)

    def log_hyperparameters(self, hyperparameters: dict[str, Any]) -> None:
        try:
            super().log_hyperparameters(hyperparameters)
        except Exception as error:  # noqa: BLE001
            self._disable(error)

    def post_close(self) -> None:
        try:
            super().post_close()
        except Exception as error:  # noqa: BLE001
            self._disable(error)

    def download_file(self, remote_file_name: str, destination: str, overwrite: bool = False,
                      progress_bar: bool = True) -> None:
        """Fetch a checkpoint artifact; any failure reads as 'not found' so autoresume goes on without it.

        Composer's autoresume queries every logger for the latest checkpoint when save_folder has none.
        WandBLogger then calls `wandb.Api()`, which raises UsageError offline or without an API key,
        and that stopped the first launch of every autoresume run.
        """
        if self._is_offline():
            raise FileNotFoundError(f'wandb is offline, so artifact {remote_file_name} was not found')
        try:
            super().download_file(remote_file_name, destination, overwrite, progress_bar)
        except FileNotFoundError:
            raise
        except Exception as error:  # noqa: BLE001 -- any wandb failure means no checkpoint from wandb
            raise FileNotFoundError(f'wandb could not fetch {remote_file_name}: {error}') from error

    def _is_offline(self) -> bool:
        return self._init_kwargs.get('mode') in ('offline', 'disabled')


def wandb_has_api_key() -> bool:
    """Tell whether wandb could log online: an API key in the environment or a `wandb login` entry in ~/.netrc."""
    if os.environ.get('WANDB_API_KEY'):
        return True
    import netrc
    host = re.sub(r'^https?://', '', os.environ.get('WANDB_BASE_URL', 'https://api.wandb.ai')).split('/')[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def build_wandb_logger(project: str, entity: Optional[str], mode: str, run_name: str,
                       directory: Optional[str]) -> Optional[SafeWandBLogger]:
    """Build the WandB logger; mode 'auto' logs online with an API key and offline without one."""
    if mode == 'disabled':
        return None
    if mode == 'auto':
        mode = 'online' if wandb_has_api_key() else 'offline'
    # A fixed id lets a resumed run (autoresume) continue the same wandb run instead of starting another.
    # Offline runs get one folder per launch; `wandb sync` uploads them into the run with this id.
    run_id = re.sub(r'[^A-Za-z0-9_-]', '-', run_name)[:64]
    init_kwargs = {'mode': mode, 'id': run_id}
    if mode == 'online':
        init_kwargs['resume'] = 'allow'
    else:
        log.info('wandb logs offline; upload later with: wandb sync %s/wandb/offline-run-*', directory or '.')
    if directory:
        os.makedirs(directory, exist_ok=True)
        init_kwargs['dir'] = directory
    return SafeWandBLogger(project=project, entity=entity, name=run_name, init_kwargs=init_kwargs)
