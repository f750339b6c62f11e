"""Rotary position embeddings (RoPE) in place of learned position embeddings.

Source: Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding" (2021). This uses
the half-split layout of GPT-NeoX and modded-nanogpt: channel i of a head is paired with channel
i + hs/2, and the pair is rotated by the angle position * base^(-2i/hs).
"""

from __future__ import annotations

import logging
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


class RotaryEmbedding:
    """Rotate q and k of shape (B, nh, T, hs) by their positions; callable as `(q, k) -> (q, k)`.

    One instance is shared by all layers. It caches float32 cos and sin tables (T, hs/2) per device
    for the longest length so far and slices them for shorter ones. `rotate` casts them to q's dtype. The tables are not parameters or buffers, so checkpoints do not contain them.

    Args:
        head_dim: channels per head hs; must be even.
        base: the wavelength base; 10,000 as in the paper.
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        if head_dim % 2 != 0:
            raise ValueError(f'rotary embeddings need an even head size, got n_embd / n_head = {head_dim}.')
        if base <= 1.0:
            raise ValueError(f'rotary base must be greater than 1, got {base}.')
        self.head_dim = head_dim
        self.base = float(base)
        # (hs/2,) angular frequencies base^(-2i/hs), i = 0 .. hs/2 - 1
        self.inv_freq = self.base**(-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Return float32 cos and sin of shape (length, hs/2)."""
        device = torch.device(device)
        cached = self._cache.get(device)
        if cached is None or cached[0].shape[0] < length:
            positions = torch.arange(length, dtype=torch.float32, device=device)
            angles = torch.outer(positions, self.inv_freq.to(device))  # (T, hs/2)
            cached = (angles.cos(), angles.sin())
            self._cache[device] = cached
        return cached[0][:length], cached[1][:length]

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x of shape (B, nh, T, hs) by the angles of positions 0 .. T-1."""
        cos, sin = self.tables(x.shape[-2], x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotate(q), self.rotate(k)


def apply_rotary(model: torch.nn.Module, optimizers: Optimizers = None, base: float = 10000.0) -> GPT:
    """Rotate q and k in every attention layer by position and delete the learned position embeddings.

    Args:
        model: a GPT or ComposerGPT, changed in place.
        optimizers: optimizers that hold the model's parameters; `transformer.wpe` is removed from them.
        base: the rotary wavelength base.

    Returns:
        The GPT that was changed.

    Raises:
        ValueError: when the model already uses ALiBi, or for an odd head size or a base <= 1.
    """
    gpt = unwrap_gpt(model)
    check_no_other_position_encoding(gpt, 'rotary')
    if gpt.transformer.h[0].attn.rotary is not None:
        warnings.warn(NoEffectWarning('Rotary embeddings are already applied to this model; nothing changed.'))
        return gpt
    rotary = RotaryEmbedding(gpt.config.n_embd // gpt.config.n_head, base)
    for block in gpt.transformer.h:
        block.attn.rotary = rotary
    remove_position_embeddings(gpt, optimizers)
    log.info('Rotary: rotating q and k in %d attention layers, removed transformer.wpe', len(gpt.transformer.h))
    return gpt


class Rotary(Algorithm):
    """Encode positions by rotating queries and keys, in place of learned position embeddings.

    Changes: in every attention layer q and k are rotated by position-dependent angles after the
    c_attn projection (and after QK-norm when enabled), so the score q_i . k_j depends on the
    positions only through i - j. `transformer.wpe` (block_size x n_embd parameters) is deleted.
    SDPA still runs with is_causal=True, so FlashAttention remains available.

    Costs: a few elementwise operations on q and k per layer, no extra matmul FLOPs, and a
    (T, hs/2) cos/sin table per device.

    Args:
        base: the wavelength base of the rotation frequencies.
    """

    def __init__(self, base: float = 10000.0):
        if base <= 1.0:
            raise ValueError(f'rotary base must be greater than 1, got {base}.')
        self.base = base

    def match(self, event: Event, state: State) -> bool:
        return event == Event.INIT

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        apply_rotary(state.model, state.optimizers, base=self.base)
