"""Logit soft-capping: squash the output logits smoothly into [-cap, cap].

Sources: Gemma 2 (Gemma Team, Google DeepMind, 2024) caps its final logits at 30 with
cap * tanh(logits / cap). modded-nanogpt uses the same form in its GPT-2 speedrun.
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


def apply_logit_softcap(model: torch.nn.Module, cap: Optional[float] = 30.0) -> GPT:
    """Make the model return cap * tanh(logits / cap); `cap=None` leaves it unchanged and warns.

    Returns:
        The GPT that was changed.
    """
    gpt = unwrap_gpt(model)
    if cap is None:
        warnings.warn(NoEffectWarning('logit_softcap with cap=None changes nothing; set a cap such as 30.'))
        return gpt
    if cap <= 0:
        raise ValueError(f'logit soft-cap must be positive, got {cap}.')
    if gpt.logit_softcap == cap:
        warnings.warn(NoEffectWarning(f'Logits are already soft-capped at {cap}; nothing changed.'))
        return gpt
    gpt.logit_softcap = float(cap)
    log.info('Logit soft-cap: logits bounded by %s', cap)
    return gpt


class LogitSoftCap(Algorithm):
    """Bound the output logits by cap * tanh(logits / cap).

    Changes: `GPT.forward` applies the cap after the head (and after padded vocabulary rows are cut
    off), so every logit lies within [-cap, cap]; the loss and the eval metrics see the
    capped logits. Logits well below the cap are nearly unchanged. No parameters change.

    Costs: one tanh over the (B, T, vocab) logits, forward and backward.

    Args:
        cap: the bound; None disables it (and warns).
    """

    def __init__(self, cap: Optional[float] = 30.0):
        if cap is not None and cap <= 0:
            raise ValueError(f'logit_softcap cap must be positive or null, got {cap}.')
        self.cap = cap

    def match(self, event: Event, state: State) -> bool:
        return event == Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        apply_logit_softcap(state.model, self.cap)
