"""Convert state dicts between our GPT and `transformers.GPT2LMHeadModel`.

The key names are the same. GPT-2's attention and MLP projections are `Conv1D` modules that store
weights as (in_features, out_features), the transpose of `nn.Linear`, so those four weights per
block are transposed on the way in and out. Padded vocabulary rows exist only on our side.
"""

from __future__ import annotations

import torch

# Weights stored as Conv1D (in, out) in GPT-2 checkpoints and as Linear (out, in) here.
TRANSPOSED_SUFFIXES = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


def _is_buffer_key(key: str) -> bool:
    # Older transformers versions store the causal mask as `attn.bias` / `attn.masked_bias` buffers.
    return key.endswith(('.attn.masked_bias', '.attn.bias'))


def hf_to_ours(hf_state: dict[str, torch.Tensor], padded_vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """Map a GPT2LMHeadModel state dict to ours, padding the vocabulary rows with zeros if asked."""
    ours = {}
    for key, value in hf_state.items():
        if _is_buffer_key(key):
            continue
        if key.endswith(TRANSPOSED_SUFFIXES):
            value = value.t()
        ours[key] = value.clone()
    if padded_vocab_size is not None:
        for key in ('transformer.wte.weight', 'lm_head.weight'):
            rows = ours[key]
            if rows.shape[0] < padded_vocab_size:
                padding = rows.new_zeros(padded_vocab_size - rows.shape[0], rows.shape[1])
                ours[key] = torch.cat([rows, padding])
    return ours


def ours_to_hf(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Map our state dict to GPT2LMHeadModel's, cutting padded vocabulary rows down to `vocab_size`."""
    hf = {}
    for key, value in state.items():
        if key.endswith(TRANSPOSED_SUFFIXES):
            value = value.t()
        if key in ('transformer.wte.weight', 'lm_head.weight'):
            value = value[:vocab_size]
        hf[key] = value.contiguous().clone()
    return hf
