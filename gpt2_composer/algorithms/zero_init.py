"""Zero initialisation of the projections that write into the residual stream.

Source: modded-nanogpt (github.com/KellerJordan/modded-nanogpt), whose README lists "projection
layers initialized to zero (muP-like)" among its GPT-2 speedrun changes.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch
from composer.algorithms.warnings import NoEffectWarning
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from gpt2_composer.algorithms.surgery import unwrap_gpt
from gpt2_composer.model import GPT

log = logging.getLogger(__name__)


def apply_zero_init_projections(model: torch.nn.Module) -> GPT:
    """Set `attn.c_proj` and `mlp.c_proj` weights and biases of every block to zero.

    Returns:
        The GPT that was changed.
    """
    gpt = unwrap_gpt(model)
    projections = [block.attn.c_proj for block in gpt.transformer.h] + [block.mlp.c_proj for block in gpt.transformer.h]
    params = [p for layer in projections for p in layer.parameters()]
    if all(not p.any() for p in params):
        warnings.warn(NoEffectWarning('The output projections are already all zero; nothing changed.'))
        return gpt
    with torch.no_grad():
        for param in params:
            param.zero_()
    log.info('Zero init: zeroed %d output projections', len(projections))
    return gpt


class ZeroInitProjections(Algorithm):
    """Start every block as the identity by zeroing its attention and MLP output projections.

    Changes: at Event.INIT the weights (and biases) of `attn.c_proj` and `mlp.c_proj` are set to zero
    instead of GPT-2's normal(0, 0.02 / sqrt(2 * n_layer)). At the first step only those projections
    receive gradients; the layers before them start learning from the second step. A checkpoint
    loaded afterwards overwrites the zeros, so resuming is unaffected.

    Costs: nothing at run time.
    """

    def match(self, event: Event, state: State) -> bool:
        return event == Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        apply_zero_init_projections(state.model)
