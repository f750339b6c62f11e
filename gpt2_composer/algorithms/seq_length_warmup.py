"""Sequence-length warmup: train on short crops of each sample first, growing to the full block.

Source: Li, Zhang and He, "The Stability-Efficiency Dilemma: Investigating Sequence Length Warmup for
Training GPT Models" (NeurIPS 2022), where it appeared as curriculum learning. Composer's own
`SeqLengthWarmup` works on HuggingFace models only. It crops at Event.AFTER_DATALOADER, after the
trainer has counted the batch's tokens. Here the crop is a DataSpec batch transform, so
`time/token`, token-based schedules and `flops_per_batch` all count the cropped length.

Wiring: the train DataSpec needs `batch_transforms=seq_len_limit_transform(dataset)`. The algorithm
sets `dataset.seq_len_limit` on the train dataloader's dataset before each step, and the transform
crops `input_ids` (B, S + 1) to (B, limit + 1). Eval dataloaders have their own datasets, so
evaluation always sees whole samples.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from composer.algorithms.warnings import NoEffectWarning
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from gpt2_composer.algorithms.surgery import unwrap_gpt

log = logging.getLogger(__name__)


def crop_to_seq_len_limit(batch: Mapping[str, torch.Tensor], dataset: Any) -> Mapping[str, torch.Tensor]:
    """Crop `batch['input_ids']` (B, S + 1) to (B, L + 1) when `dataset.seq_len_limit` is an L < S.

    The kept tokens are the first L + 1 of each sample, so inputs and targets stay aligned. The rest
    of each sample is not trained on. Without a limit the batch is returned as it is.
    """
    limit = getattr(dataset, 'seq_len_limit', None)
    if limit is None or batch['input_ids'].shape[1] <= limit + 1:
        return batch
    return {**batch, 'input_ids': batch['input_ids'][:, :limit + 1]}


def seq_len_limit_transform(dataset: Any) -> Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]:
    """Return a DataSpec `batch_transforms` that crops batches to `dataset.seq_len_limit`."""
    return functools.partial(crop_to_seq_len_limit, dataset=dataset)


class SequenceLengthWarmup(Algorithm):
    """Crop training samples to a length that grows linearly from `min_seq_len` to the full block.

    Changes: during the first `duration` of training (a fraction of max_duration, in its unit),
    step n trains on the first L_n + 1 tokens of each sample. L_n rises linearly from `min_seq_len`
    to `max_seq_len` and is rounded down to a multiple of `multiple_of`. Afterwards samples are
    whole again. The batch size in samples is unchanged, so a warmup step contains fewer
    tokens; a token-based max_duration therefore takes more steps.

    Costs: the cropped-off tokens are read from the dataset but never trained on, so an epoch
    covers fewer tokens. Short steps use the hardware less efficiently, most visibly on GPUs.

    | Key                     | Logged value                                  |
    |-------------------------|-----------------------------------------------|
    | `seq_length_warmup/seq_len` | tokens per sample (L) for the next step   |

    Args:
        duration: fraction of training, in (0, 1], over which the length grows.
        min_seq_len: the first step's length L.
        max_seq_len: the final length; None uses the model's `block_size`.
        multiple_of: lengths are rounded down to a multiple of this (8 suits GPU matmul tiles).
    """

    def __init__(self, duration: float = 0.3, min_seq_len: int = 64, max_seq_len: Optional[int] = None,
                 multiple_of: int = 8):
        if not 0.0 < duration <= 1.0:
            raise ValueError(f'seq_length_warmup duration is a fraction of training in (0, 1], got {duration}.')
        if min_seq_len < 1 or multiple_of < 1 or (max_seq_len is not None and max_seq_len < 1):
            raise ValueError(f'seq_length_warmup lengths must be positive, got min_seq_len={min_seq_len}, '
                             f'max_seq_len={max_seq_len}, multiple_of={multiple_of}.')
        self.duration = duration
        self.min_seq_len = min_seq_len
        self.max_seq_len = max_seq_len
        self.multiple_of = multiple_of
        self.seq_len_limit: Optional[int] = None

    def seq_len_at(self, elapsed: float) -> Optional[int]:
        """Return L for a step that starts at `elapsed` (fraction of training), or None once warmup is over."""
        assert self.max_seq_len is not None, 'set at Event.INIT'
        if elapsed >= self.duration or self.min_seq_len >= self.max_seq_len:
            return None
        length = self.min_seq_len + (self.max_seq_len - self.min_seq_len) * elapsed / self.duration
        length = int(length) // self.multiple_of * self.multiple_of
        return max(self.min_seq_len, min(length, self.max_seq_len))

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.FIT_START, Event.AFTER_DATALOADER, Event.BATCH_END)

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        if event == Event.INIT:
            self._init(state)
        elif event == Event.AFTER_DATALOADER:
            self._check_cropped(state)
        else:  # FIT_START for the first step (also after a resume), BATCH_END for each next one
            self._set_limit(state, logger)

    def _init(self, state: State) -> None:
        block_size = unwrap_gpt(state.model).config.block_size
        if self.max_seq_len is None:
            self.max_seq_len = block_size
        if self.max_seq_len > block_size:
            raise ValueError(f'seq_length_warmup max_seq_len={self.max_seq_len} exceeds model.block_size={block_size}.')
        if self.min_seq_len >= self.max_seq_len:
            warnings.warn(NoEffectWarning(
                f'seq_length_warmup min_seq_len={self.min_seq_len} is not below the full length '
                f'{self.max_seq_len}, so every step trains on whole samples. Lower min_seq_len.'))

    def _set_limit(self, state: State, logger: Logger) -> None:
        dataset = getattr(state.train_dataloader, 'dataset', None)
        if dataset is None:
            raise RuntimeError('seq_length_warmup needs a torch DataLoader with a dataset as train dataloader, '
                               f'got {type(state.train_dataloader).__name__}.')
        elapsed = state.get_elapsed_duration()
        if elapsed is None:
            raise RuntimeError('seq_length_warmup needs max_duration to be set, to know how far training is.')
        self.seq_len_limit = self.seq_len_at(float(elapsed.value))
        dataset.seq_len_limit = self.seq_len_limit
        logger.log_metrics({'seq_length_warmup/seq_len': self.seq_len_limit or self.max_seq_len})

    def _check_cropped(self, state: State) -> None:
        # A shape read, no device sync: catches a train DataSpec without the crop transform.
        if self.seq_len_limit is not None and state.batch['input_ids'].shape[1] > self.seq_len_limit + 1:
            raise RuntimeError(
                'seq_length_warmup set a limit of {} tokens but the batch has {}: the train DataSpec lacks '
                'batch_transforms=seq_len_limit_transform(dataset) from '
                'gpt2_composer.algorithms.seq_length_warmup.'.format(self.seq_len_limit,
                                                                     state.batch['input_ids'].shape[1] - 1))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state['seq_len_limit'] = self.seq_len_limit
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # FIT_START recomputes the limit from the restored timestamp; the stored one is for inspection.
        self.seq_len_limit = state.get('seq_len_limit')
