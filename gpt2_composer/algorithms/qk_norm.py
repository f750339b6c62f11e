"""QK-norm: RMS-normalise queries and keys per head before the attention scores.

Sources: Henry et al., "Query-Key Normalization for Transformers" (Findings of EMNLP 2020);
Dehghani et al., "Scaling Vision Transformers to 22 Billion Parameters" (2023), which normalises q
and k to keep attention logits from growing; modded-nanogpt (github.com/KellerJordan/modded-nanogpt)
uses it in its GPT-2 speedrun.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch
import torch.nn as nn
from composer.algorithms.warnings import NoEffectWarning
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from gpt2_composer.algorithms.surgery import Optimizers, add_gains_to_optimizers, unwrap_gpt
from gpt2_composer.model import GPT

log = logging.getLogger(__name__)


def apply_qk_norm(model: torch.nn.Module, optimizers: Optimizers = None, eps: Optional[float] = None) -> GPT:
    """Add `attn.q_norm` and `attn.k_norm` (nn.RMSNorm over the head size, gains at 1) to every block.

    Args:
        model: a GPT or ComposerGPT, changed in place.
        optimizers: optimizers that hold the model's parameters; the new gains join the group of
            the other 1-D parameters (no weight decay).
        eps: RMSNorm epsilon; None uses the model's `layer_norm_eps`.

    Returns:
        The GPT that was changed.
    """
    gpt = unwrap_gpt(model)
    if gpt.transformer.h[0].attn.q_norm is not None:
        warnings.warn(NoEffectWarning('QK-norm is already applied to this model; nothing changed.'))
        return gpt
    head_dim = gpt.config.n_embd // gpt.config.n_head
    eps = gpt.config.layer_norm_eps if eps is None else eps
    device = gpt.lm_head.weight.device
    new_params = []
    for block in gpt.transformer.h:
        block.attn.q_norm = nn.RMSNorm(head_dim, eps=eps, device=device)
        block.attn.k_norm = nn.RMSNorm(head_dim, eps=eps, device=device)
        new_params += [block.attn.q_norm.weight, block.attn.k_norm.weight]
    add_gains_to_optimizers(optimizers, new_params)
    log.info('QK-norm: added q_norm and k_norm to %d attention layers', len(gpt.transformer.h))
    return gpt


class QKNorm(Algorithm):
    """RMS-normalise each head's query and key vectors, with a learned gain per channel.

    Changes: after c_attn, q and k of shape (B, nh, T, hs) pass through `attn.q_norm` and
    `attn.k_norm` (nn.RMSNorm over hs, one gain vector shared by the heads of a layer), before the
    rotary rotation when that is enabled. This bounds the attention logits by the gains, which lets
    training tolerate a higher learning rate. It adds 2 * hs parameters per layer, named
    `transformer.h.N.attn.q_norm.weight` and `.k_norm.weight`, so checkpoints differ from GPT-2's.

    Costs: two elementwise normalisations per layer, no extra matmul FLOPs.

    Args:
        eps: RMSNorm epsilon; None uses the model's `layer_norm_eps`.
    """

    def __init__(self, eps: Optional[float] = None):
        if eps is not None and eps <= 0:
            raise ValueError(f'qk_norm eps must be positive, got {eps}.')
        self.eps = eps

    def match(self, event: Event, state: State) -> bool:
        return event == Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        apply_qk_norm(state.model, state.optimizers, eps=self.eps)
