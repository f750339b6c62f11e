"""GPT-2 as a ComposerModel: next-token loss, eval metrics and `flops_per_batch` for SpeedMonitor.

A batch is a dict `{'input_ids': LongTensor (B, T + 1)}`, one packed sample per row. As in nanoGPT,
the model reads tokens[0:T] and is scored on tokens[1:T + 1], so every one of the T positions of a
block has a target.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import ComposerModel
from torchmetrics import Metric

from gpt2_composer.flops import flops_per_token
from gpt2_composer.loss import cross_entropy
from gpt2_composer.model import GPT, GPTConfig


def split_inputs_targets(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return model inputs tokens[:, :-1] and targets tokens[:, 1:] of a packed batch."""
    tokens = batch['input_ids']
    return tokens[:, :-1], tokens[:, 1:]


def tokens_in_batch(batch: Mapping[str, torch.Tensor]) -> int:
    """Count the tokens a batch trains on: B * T, one less per row than `input_ids` holds."""
    batch_size, sample_len = batch['input_ids'].shape
    return batch_size * (sample_len - 1)


class ComposerGPT(ComposerModel):
    """Composer wrapper around `GPT`.

    Args:
        config: the GPT-2 shape.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.model = GPT(config)
        self.eval_metrics = {
            'LanguageCrossEntropy': LanguageCrossEntropy(),
            'LanguagePerplexity': LanguagePerplexity(),
        }

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs, _ = split_inputs_targets(batch)
        return self.model(inputs)

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor], *args, **kwargs) -> torch.Tensor:
        _, targets = split_inputs_targets(batch)
        return cross_entropy(outputs.reshape(-1, outputs.size(-1)), targets.reshape(-1))

    def eval_forward(self, batch: Mapping[str, torch.Tensor], outputs: Optional[Any] = None) -> torch.Tensor:
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        # Training metrics would cost a second pass over the logits each step; the loss is logged anyway.
        return {} if is_train else self.eval_metrics

    def update_metric(self, batch: Mapping[str, torch.Tensor], outputs: torch.Tensor, metric: Metric) -> None:
        _, targets = split_inputs_targets(batch)
        metric.update(outputs.reshape(-1, outputs.size(-1)), targets.reshape(-1))

    def flops_per_batch(self, batch: Mapping[str, torch.Tensor]) -> int:
        """Return training FLOPs for this batch, from the tokens actually in it.

        The count follows the batch's own shape, so it stays right for micro-batches, the last short
        batch and sequence-length warmup.
        """
        seq_len = batch['input_ids'].shape[1] - 1
        return tokens_in_batch(batch) * flops_per_token(self.model, seq_len)
