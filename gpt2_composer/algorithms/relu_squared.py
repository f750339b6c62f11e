"""ReLU-squared MLP activation in place of GPT-2's GELU.

Source: So et al., "Primer: Searching for Efficient Transformers for Language Modeling" (NeurIPS
2021), which found squared ReLU by architecture search; modded-nanogpt uses it in its GPT-2 speedrun.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from composer.algorithms.warnings import NoEffectWarning
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from gpt2_composer.algorithms.surgery import unwrap_gpt
from gpt2_composer.model import GPT

log = logging.getLogger(__name__)


class ReLUSquared(nn.Module):
    """relu(x) ** 2, elementwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


def apply_relu_squared(model: torch.nn.Module) -> GPT:
    """Replace `mlp.act` in every block with `ReLUSquared`; no parameters change.

    Returns:
        The GPT that was changed.
    """
    gpt = unwrap_gpt(model)
    if all(isinstance(block.mlp.act, ReLUSquared) for block in gpt.transformer.h):
        warnings.warn(NoEffectWarning('Every MLP already uses ReLU-squared; nothing changed.'))
        return gpt
    for block in gpt.transformer.h:
        block.mlp.act = ReLUSquared()
    log.info('ReLU-squared: replaced the activation of %d MLPs', len(gpt.transformer.h))
    return gpt


class ReLUSquaredMLP(Algorithm):
    """Use relu(x)^2 as the MLP activation instead of the tanh-approximated GELU.

    Changes: `transformer.h.N.mlp.act` becomes `ReLUSquared` in every block. Parameter names and
    shapes stay those of GPT-2, so only the recipe's `algorithms` entry distinguishes such a
    checkpoint from GPT-2's.

    Costs: none measurable; it is cheaper than GELU's tanh, and the matmul FLOPs are unchanged.
    """

    def match(self, event: Event, state: State) -> bool:
        return event == Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        apply_relu_squared(state.model)
