"""ALiBi: attention with linear biases in place of learned position embeddings.

Source: Press, Smith and Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input
Length Extrapolation" (ICLR 2022), and their reference code github.com/ofirpress/attention_with_linear_biases
for the head slopes. Composer's own `composer.algorithms.Alibi` rewrites HuggingFace GPT-2 modules
only, so it finds nothing to change in this model.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Optional

import torch
from composer.algorithms.warnings import NoEffectWarning
from composer.core import Algorithm, Event, State
from composer.loggers import Logger

from gpt2_composer.algorithms.surgery import (Optimizers, check_no_other_position_encoding,
                                              remove_position_embeddings, unwrap_gpt)
from gpt2_composer.model import GPT

log = logging.getLogger(__name__)


def alibi_slopes(n_head: int) -> list[float]:
    """Return ALiBi's per-head slopes: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8).

    For a head count that is not a power of two, the first 2^floor(log2 n) heads take that power's
    sequence. The remaining heads take every other slope of the sequence for twice as many heads, as
    the paper's reference code does. 12 heads: 2^-1 ... 2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    """
    def power_of_two_slopes(n: int) -> list[float]:
        return [2.0**(-8.0 * (i + 1) / n) for i in range(n)]

    if n_head & (n_head - 1) == 0:
        return power_of_two_slopes(n_head)
    lower = 2**int(math.floor(math.log2(n_head)))
    return power_of_two_slopes(lower) + power_of_two_slopes(2 * lower)[0::2][:n_head - lower]


class ALiBiBias:
    """Build and cache the additive attention bias: slope_h * (j - i) for keys j <= i, -inf after i.

    One instance is shared by all layers. It keeps, per device and dtype, the bias for the longest
    length asked so far, shape (nh, L, L), and returns its top-left (nh, T, T) corner for shorter
    lengths, because the bias depends only on j - i. Memory: nh * L^2 elements per device and dtype,
    24 MiB for 12 heads at L = 1024 in bf16. The bias is not a parameter or buffer, so it is neither
    in the state dict nor in checkpoints.

    Args:
        n_head: attention heads; each gets its own slope.
    """

    def __init__(self, n_head: int):
        self.slopes = torch.tensor(alibi_slopes(n_head), dtype=torch.float32)
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def build(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Return the full (nh, length, length) bias, uncached."""
        positions = torch.arange(length, device=device)
        distance = (positions[None, :] - positions[:, None]).float()  # (T, T): j - i, <= 0 on and below the diagonal
        bias = self.slopes.to(device)[:, None, None] * distance  # (nh, T, T)
        bias = bias.masked_fill(distance > 0, float('-inf'))
        return bias.to(dtype)

    def __call__(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (torch.device(device), dtype)
        cached = self._cache.get(key)
        if cached is None or cached.shape[-1] < length:
            cached = self.build(length, device, dtype)
            self._cache[key] = cached
        return cached[:, :length, :length]


def apply_alibi(model: torch.nn.Module, optimizers: Optimizers = None) -> GPT:
    """Give every attention layer ALiBi biases and delete the learned position embeddings.

    Args:
        model: a GPT or ComposerGPT, changed in place.
        optimizers: optimizers that hold the model's parameters; `transformer.wpe` is removed from them.

    Returns:
        The GPT that was changed.

    Raises:
        ValueError: when the model already uses rotary embeddings.
    """
    gpt = unwrap_gpt(model)
    check_no_other_position_encoding(gpt, 'alibi')
    if gpt.transformer.h[0].attn.alibi is not None:
        warnings.warn(NoEffectWarning('ALiBi is already applied to this model; nothing changed.'))
        return gpt
    bias = ALiBiBias(gpt.config.n_head)
    for block in gpt.transformer.h:
        block.attn.alibi = bias
    remove_position_embeddings(gpt, optimizers)
    log.info('ALiBi: biased %d attention layers and removed transformer.wpe', len(gpt.transformer.h))
    return gpt


class ALiBi(Algorithm):
    """Replace learned position embeddings with ALiBi's per-head linear distance penalties.

    Changes: every attention layer adds slope_h * (j - i) to its scores for keys j <= i, one fixed
    slope per head, and `transformer.wpe` (block_size x n_embd parameters) is deleted. Because no
    parameter depends on position, the model also runs on sequences longer than `block_size`.

    Costs: attention takes a float mask, so SDPA cannot use FlashAttention and falls back to the
    memory-efficient or math kernel (on GPUs the slowdown grows with T). The bias costs
    nh * T^2 elements of memory per device, shared by all layers. The matmul FLOPs are unchanged.

    Applied at Event.INIT, before checkpoints load, so a checkpoint written with ALiBi loads into a
    run that has it enabled.
    """

    def match(self, event: Event, state: State) -> bool:
        return event == Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        apply_alibi(state.model, state.optimizers)
