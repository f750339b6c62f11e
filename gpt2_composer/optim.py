"""AdamW with nanoGPT's weight-decay groups, and its warmup-then-cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from composer.core import State, Time, TimeUnit

from gpt2_composer.config import ConfigError, OptimizerConfig, SchedulerConfig


def build_optimizer(model: torch.nn.Module, config: OptimizerConfig, device: str) -> torch.optim.AdamW:
    """Build AdamW that decays 2-D weights (matmuls, embeddings) and not gains and biases.

    Args:
        model: the model whose parameters are optimized.
        config: the `optimizer` section of the recipe.
        device: 'gpu' or 'cpu'; `config.fused=None` picks the fused kernel on GPUs.
    """
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

    At step i (0-based) the multiplier of the peak lr is (i + 1) / (warmup + 1) during warmup, so the
    first step already trains. From `warmup` to `decay_end` it follows a half cosine from 1 down to
    min_lr / lr, and stays there afterwards. Steps are optimizer steps ('ba') or tokens ('tok').

    Args:
        warmup: Composer time string, e.g. '2000ba'.
        decay_end: time string of the end of the cosine, e.g. '600000ba'.
        min_lr_ratio: min_lr / peak lr.
    """

    def __init__(self, warmup: str, decay_end: str, min_lr_ratio: float):
        self.warmup = Time.from_timestring(warmup)
        self.decay_end = Time.from_timestring(decay_end)
        if self.warmup.unit != self.decay_end.unit or self.warmup.unit not in (TimeUnit.BATCH, TimeUnit.TOKEN):
            raise ConfigError(f"scheduler.warmup='{warmup}' and the decay end '{decay_end}' must both be in batches "
                             "('ba') or both in tokens ('tok'); set scheduler.decay_end to match.")
        if self.decay_end.value <= self.warmup.value:
            raise ConfigError(f"the decay end '{decay_end}' must come after scheduler.warmup='{warmup}'.")
        self.min_lr_ratio = min_lr_ratio

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
