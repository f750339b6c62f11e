"""AdamW with nanoGPT's weight-decay groups, and its warmup-then-cosine learning-rate schedule."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger

from gpt2_composer.algorithms.muon import build_muon_optimizer
from gpt2_composer.config import ConfigError, OptimizerConfig, SchedulerConfig

log = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, config: OptimizerConfig, device: str) -> torch.optim.AdamW:
    """Build AdamW that decays 2-D weights (matmuls, embeddings) and not gains and biases.

    Args:
        model: the model whose parameters are optimized.
        config: the `optimizer` section of the recipe.
        device: 'gpu' or 'cpu'; `config.fused=None` picks the fused kernel on GPUs. On the CPU recipe
            the fused kernel cut the optimizer's own time from 25 to 12 ms, but the whole step took
            about 6% longer (1,550 vs 1,650 ms in bench/profile_step.py), so CPUs keep the foreach loop.
    """
    if config.name == 'muon':
        return build_muon_optimizer(model, muon_lr=config.muon_lr, muon_momentum=config.muon_momentum,
                                    muon_weight_decay=config.muon_weight_decay, adamw_lr=config.lr,
                                    adamw_betas=tuple(config.betas), adamw_eps=config.eps,
                                    adamw_weight_decay=config.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    fused = config.fused if config.fused is not None else device == 'gpu'
    groups = [
        {'params': decay, 'weight_decay': config.weight_decay},
        {'params': no_decay, 'weight_decay': 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused)


class WarmupCosineSchedule:
    """Composer scheduler: linear warmup, cosine decay to `min_lr`, then constant, as nanoGPT's `get_lr`.

    `multiplier(i)` is (i + 1) / (warmup + 1) during warmup, so the first step already trains. From
    `warmup` to `decay_end` it follows a half cosine from 1 down to min_lr / lr, and stays there
    afterwards. Steps are optimizer steps ('ba') or tokens ('tok'). Composer evaluates the schedule
    before it advances its step count, so optimizer step i >= 1 (0-based) trains with `multiplier(i - 1)`
    and steps 0 and 1 share the first value: the whole schedule runs one step later than nanoGPT's.

    Args:
        warmup: Composer time string, e.g. '2000ba'.
        decay_end: time string of the end of the cosine, e.g. '600000ba'.
        min_lr_ratio: min_lr / peak lr.
    """

    def __init__(self, warmup: str, decay_end: str, min_lr_ratio: float):
        self.set(warmup, decay_end, min_lr_ratio)

    def set(self, warmup: str, decay_end: str, min_lr_ratio: float) -> None:
        """Replace the schedule's shape; `ResumedSchedule` calls this after a checkpoint is loaded."""
        self.warmup = Time.from_timestring(warmup)
        self.decay_end = Time.from_timestring(decay_end)
        if self.warmup.unit != self.decay_end.unit or self.warmup.unit not in (TimeUnit.BATCH, TimeUnit.TOKEN):
            raise ConfigError(f"scheduler.warmup='{warmup}' and the decay end '{decay_end}' must both be in batches "
                             "('ba') or both in tokens ('tok'); set scheduler.decay_end to match.")
        if self.decay_end.value <= self.warmup.value:
            raise ConfigError(f"The lr decay ends at '{decay_end}' (scheduler.decay_end, or max_duration when it is "
                              f"null), which is not after scheduler.warmup='{warmup}'. Shorten the warmup, e.g. "
                              'scheduler.warmup=1ba for a smoke run, or train longer.')
        self.min_lr_ratio = min_lr_ratio

    def as_dict(self) -> dict[str, Any]:
        return {'warmup': str(self.warmup), 'decay_end': str(self.decay_end), 'min_lr_ratio': self.min_lr_ratio}

    def multiplier(self, step: int) -> float:
        """Return the lr multiplier at `step` batches (or tokens) since the start."""
        warmup, end = self.warmup.value, self.decay_end.value
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if step >= end:
            return self.min_lr_ratio
        progress = (step - warmup) / (end - warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
        return self.min_lr_ratio + cosine * (1.0 - self.min_lr_ratio)

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        step = state.timestamp.get(self.warmup.unit).value
        return self.multiplier(step)


def build_scheduler(config: SchedulerConfig, peak_lr: float, max_duration: str) -> WarmupCosineSchedule:
    return WarmupCosineSchedule(config.warmup, config.decay_end or max_duration, config.min_lr / peak_lr)


class ResumedSchedule(Callback):
    """Choose the learning-rate schedule of a resumed run: the checkpoint's (default) or the recipe's.

    The schedule is computed from the recipe at start-up, so without this callback a resumed run whose
    YAML changed `optimizer.lr`, `scheduler.*` or `max_duration` would silently follow the new values.
    The callback stores the schedule in force (each param group's peak lr, warmup, decay end, min lr
    ratio) in every checkpoint. When a loaded checkpoint's schedule differs from the recipe's,
    `source='checkpoint'` restores the checkpoint's and `source='config'` keeps the recipe's. Both warn
    and then set the peak lrs of Composer's LambdaLR and the lrs of the next step to match.

    Args:
        schedule: the run's scheduler, changed in place on resume.
        group_peak_lrs: the peak lr of each optimizer param group, as built from the recipe. Groups
            differ under Muon, whose matrices have their own lr.
        source: 'checkpoint' or 'config', the recipe's `resume_schedule`.
    """

    def __init__(self, schedule: WarmupCosineSchedule, group_peak_lrs: list[float], source: str = 'checkpoint'):
        self.schedule = schedule
        self.group_peak_lrs = list(group_peak_lrs)
        self.source = source
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {'group_peak_lrs': self.group_peak_lrs, **self.schedule.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded = dict(state)

    def after_load(self, state: State, logger: Logger) -> None:
        if self.loaded is None:
            return  # a fresh run, or a checkpoint saved without this callback
        loaded, self.loaded = self.loaded, None
        in_recipe = self.state_dict()
        if loaded == in_recipe:
            return  # the checkpoint's optimizer and LambdaLR state already hold the right lrs
        if self.source == 'checkpoint':
            log.warning('Resuming with the checkpoint\'s learning-rate schedule %s; the recipe asks for %s. '
                        'Set resume_schedule=config to use the recipe\'s.', loaded, in_recipe)
            self.group_peak_lrs = list(loaded.pop('group_peak_lrs'))
            self.schedule.set(**loaded)
        else:
            log.warning('Resuming with the recipe\'s learning-rate schedule %s instead of the checkpoint\'s %s '
                        '(resume_schedule=config).', in_recipe, loaded)
        self._set_lrs(state)

    def _set_lrs(self, state: State) -> None:
        # Composer steps the scheduler before it advances the timestamp, so the lr of batch b was
        # computed at batch b - 1. NOTE: a schedule in tokens uses the current token count, which
        # shifts the first resumed step's lr by one batch.
        now = state.timestamp.get(self.schedule.warmup.unit).value
        step = max(now - 1, 0) if self.schedule.warmup.unit == TimeUnit.BATCH else now
        multiplier = self.schedule.multiplier(step)
        for scheduler in state.schedulers:
            scheduler.base_lrs = list(self.group_peak_lrs)
        for optimizer in state.optimizers:
            for group, peak in zip(optimizer.param_groups, self.group_peak_lrs):
                group['initial_lr'] = peak
                group['lr'] = peak * multiplier
