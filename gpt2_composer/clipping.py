"""Gradient clipping that also logs the global gradient norm it computed."""

from __future__ import annotations

from typing import Optional

import torch
from composer.algorithms import GradientClipping
from composer.core import Event, State
from composer.loggers import Logger
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor

GRAD_NORM_KEY = 'grad/norm'


def clip_grad_norm(model: torch.nn.Module, max_norm: float, fsdp_v1: bool) -> torch.Tensor:
    """Clip the global L2 norm of all gradients to `max_norm` and return the norm before clipping.

    FSDP v1 needs its root module's own `clip_grad_norm_`. Plain parameters and FSDP2's DTensors go
    through `torch.nn.utils.clip_grad_norm_`, which reduces the DTensor shard norms across ranks.
    """
    if fsdp_v1:
        roots = [m for m in model.modules() if isinstance(m, FullyShardedDataParallel) and m.check_is_root()]
        return torch.stack([root.clip_grad_norm_(max_norm=max_norm) for root in roots]).max()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


class ClipGradNormAndLog(GradientClipping):
    """Composer's norm clipping (`clipping_type='norm'`) that logs the pre-clip norm every `log_interval` steps.

    Runs on `Event.AFTER_TRAIN_BATCH`, after the last micro-batch's backward and before the optimizer step.

    | Key         | Logged value                                                          |
    |-------------|-----------------------------------------------------------------------|
    | `grad/norm` | global L2 norm of the gradients over all ranks, before clipping       |

    Args:
        clipping_threshold: the max global norm.
        log_interval: optimizer steps between logged norms; the first step always logs.
    """

    def __init__(self, clipping_threshold: float, log_interval: int = 1):
        super().__init__(clipping_type='norm', clipping_threshold=clipping_threshold)
        self.log_interval = log_interval

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        if event != Event.AFTER_TRAIN_BATCH:
            return None
        norm = clip_grad_norm(state.model, self.clipping_threshold, fsdp_v1=state.fsdp_config_version == 1)
        step = state.timestamp.batch.value + 1  # the step being taken; metrics are keyed step - 1, as the loss
        if step % self.log_interval == 0 or step == 1:
            # float() is a host sync, so the norm is read only on logged steps, like the console line.
            logger.log_metrics({GRAD_NORM_KEY: float(norm)})
        return None
