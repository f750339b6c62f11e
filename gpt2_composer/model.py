"""GPT-2 in plain PyTorch, with the parameter names of OpenAI's published checkpoint.

The module tree matches `transformers.GPT2LMHeadModel` key by key (`transformer.wte`,
`transformer.h.0.attn.c_attn`, ..., `lm_head`), except that our projections are `nn.Linear`
where GPT-2's are `Conv1D`, so their weights are stored transposed. Composer concerns live in
`gpt2_composer.composer_model`; nothing here imports Composer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    """Shape of a GPT-2 model. The defaults are GPT-2 124M."""

    block_size: int = 1024  # maximum context length T
    vocab_size: int = 50257  # ids the tokenizer can produce; logits are returned for these only
    # Rows of the embedding and output head. Padding 50257 up to 50304 (a multiple of 64)
    # speeds up the head's matmul on GPUs; the padded rows never receive probability mass.
    padded_vocab_size: Optional[int] = None
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.padded_vocab_size is None:
            self.padded_vocab_size = self.vocab_size
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(
                f'model.padded_vocab_size={self.padded_vocab_size} is smaller than '
                f'model.vocab_size={self.vocab_size}; set it to at least {self.vocab_size} (e.g. 50304) or null.')
        if self.n_embd % self.n_head != 0:
            raise ValueError(f'model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; '
                             'choose a head count that divides the width.')


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `F.scaled_dot_product_attention`.

    SDPA picks FlashAttention or the memory-efficient kernel on GPUs and a fused C++ kernel on CPU.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # Hooks for the speedup algorithms in `gpt2_composer.algorithms`. All are None in GPT-2.
        # q_norm, k_norm: modules applied to q and k of shape (B, nh, T, hs), for QK-norm.
        # rotary: a callable (q, k) -> (q, k) that rotates both by position.
        # alibi: a callable (T, device, dtype) -> float attention bias (nh, T, T) that includes the causal mask.
        self.q_norm: Optional[nn.Module] = None
        self.k_norm: Optional[nn.Module] = None
        self.rotary: Optional[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = None
        self.alibi: Optional[Callable[[int, torch.device, torch.dtype], torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        # Without a bias, is_causal=True lets SDPA pick FlashAttention. A float mask rules that kernel out.
        attn_mask = self.alibi(T, x.device, q.dtype) if self.alibi is not None else None
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=attn_mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network, 4x wide, with GPT-2's tanh-approximated GELU."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = nn.GELU(approximate='tanh')
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """GPT-2 language model: token and position embeddings, `n_layer` blocks, final LayerNorm, tied head.

    Args:
        config: the model shape.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # Logit soft-capping (an algorithm, off in GPT-2): logits become cap * tanh(logits / cap).
        self.logit_softcap: Optional[float] = None
        # Weight tying: one Parameter serves as token embedding and output head.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # because each block adds two of them to the stream.
        for name, param in self.named_parameters():
            if name.endswith('c_proj.weight'):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_position_embeddings: bool = False) -> int:
        """Count parameters, the tied embedding and head once.

        Args:
            exclude_position_embeddings: leave out `transformer.wpe`, as the FLOPs formula does.
        """
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if exclude_position_embeddings and 'wpe' in self.transformer:
            total -= self.transformer.wpe.weight.numel()
        return total

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Compute next-token logits.

        Args:
            idx: token ids, shape (B, T) with T <= block_size.

        Returns:
            logits of shape (B, T, vocab_size); padded vocabulary rows are cut off.
        """
        B, T = idx.size()
        # Learned position embeddings stop at block_size. Without them (ALiBi, rotary) any length runs.
        if T > self.config.block_size and 'wpe' in self.transformer:
            raise ValueError(f'sequence length {T} exceeds model.block_size={self.config.block_size}; '
                             'crop the input or train a model with a longer block.')
        x = self.transformer.wte(idx)  # (B, T, C)
        if 'wpe' in self.transformer:
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(pos)  # (T, C) broadcast over B
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, padded_vocab_size)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., :self.config.vocab_size]
        if self.logit_softcap is not None:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return logits

    # Composer's FSDP (v1 and v2) calls these to choose the submodules it shards as units.
    def fsdp_wrap_fn(self, module: nn.Module) -> bool:
        return isinstance(module, Block)

    def activation_checkpointing_fn(self, module: nn.Module) -> bool:
        return isinstance(module, Block)
