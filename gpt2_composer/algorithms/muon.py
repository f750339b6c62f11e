"""Muon for the 2-D hidden weights, AdamW for everything else, in one optimizer object.

Source: Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (blog post, 2024)
and its use in modded-nanogpt (github.com/KellerJordan/modded-nanogpt). Muon keeps SGD momentum
for each weight matrix and replaces the update by the nearest semi-orthogonal matrix, which a
quintic Newton-Schulz iteration approximates in a few matmuls. The iteration's coefficients
(3.4445, -4.7750, 2.0315) are the ones published with Muon. They give up exact orthogonality
(singular values end up roughly in 0.7..1.2) to grow small singular values fast.

Composer drives one optimizer, so `MuonWithAdamW` contains both kinds of param groups: groups with
`use_muon=True` take the Muon update, the others an AdamW update. Composer's LR schedulers scale
every group's lr by the same multiplier.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import Any, Callable, Optional

import torch
from composer.algorithms.warnings import NoEffectWarning

# Parameters inside the transformer blocks, e.g. `transformer.h.3.mlp.c_fc.weight`, also under a
# wrapper's prefix (`model.transformer.h.3...`).
_BLOCK_PARAM = re.compile(r'(^|\.)transformer\.h\.\d+\.')

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate U V^T of the SVD U S V^T of a 2-D `matrix` by a quintic Newton-Schulz iteration.

    The input is scaled to spectral norm <= 1 (by its Frobenius norm), then each step maps
    X -> a X + b (X X^T) X + c (X X^T)^2 X, which pushes every singular value towards 1. A tall
    matrix is transposed so that X X^T is the smaller Gram matrix. The iteration runs in bf16, as
    Muon's authors do on GPUs. bf16 is also faster on the 2-core CPU of docs/speedups.md: the 16
    matrices of the CPU recipe took about 50 ms per step in bf16 against 80 to 200 ms in float32.

    Costs: per step three matmuls with a min(m, n)-square Gram matrix: about 6 * m * n * min(m, n)
    FLOPs per step.
    """
    if matrix.dim() != 2:
        raise ValueError(f'orthogonalize takes a 2-D matrix, got shape {tuple(matrix.shape)}')
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(torch.bfloat16)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    if transposed:
        x = x.T
    return x.to(matrix.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on param groups with `use_muon=True`, AdamW (decoupled weight decay) on the others.

    Muon group keys: lr, momentum, nesterov, ns_steps, weight_decay. The update of an m x n weight
    is orthogonalize(momentum-smoothed gradient) * sqrt(max(1, m / n)). The factor gives tall
    matrices updates of the same RMS per column as square ones. Weight decay first multiplies the
    weight by (1 - lr * weight_decay).
    AdamW group keys: lr, betas, eps, weight_decay, as in `torch.optim.AdamW`.

    Per-parameter state (saved by `state_dict`): `momentum_buffer` for Muon; `step`, `exp_avg`,
    `exp_avg_sq` for AdamW.

    NOTE: Muon needs each weight matrix whole. Under FSDP a rank has only a flat shard, so `step`
    raises for parameters that are not 2-D; train with DDP (no `fsdp` section) instead. Every DDP
    rank orthogonalises every matrix; modded-nanogpt spreads that work across ranks instead.

    Args:
        params: param groups, each with `use_muon` set; Muon groups must hold 2-D parameters only.
        lr, momentum, nesterov, ns_steps: Muon defaults.
        adamw_betas, adamw_eps: AdamW defaults.
        weight_decay: default decoupled weight decay of both kinds of groups.
    """

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-8, weight_decay: float = 0.0):
        if lr <= 0 or not 0.0 <= momentum < 1.0 or ns_steps < 1:
            raise ValueError(f'invalid Muon settings: lr={lr}, momentum={momentum} (use [0, 1)), ns_steps={ns_steps}.')
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, betas=tuple(adamw_betas),
                        eps=adamw_eps, weight_decay=weight_decay, use_muon=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group['use_muon']:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        for param in group['params']:
            if param.grad is None:
                continue
            if param.dim() != 2:
                raise RuntimeError(f'Muon got a parameter of shape {tuple(param.shape)}; it needs whole 2-D matrices. '
                                   'Under FSDP the optimizer sees flat shards: train Muon with DDP (fsdp: null).')
            state = self.state[param]
            if 'momentum_buffer' not in state:
                state['momentum_buffer'] = torch.zeros_like(param)
            buffer = state['momentum_buffer']
            buffer.mul_(group['momentum']).add_(param.grad)
            direction = param.grad.add(buffer, alpha=group['momentum']) if group['nesterov'] else buffer
            update = orthogonalize(direction, steps=group['ns_steps'])
            scale = max(1.0, param.shape[0] / param.shape[1])**0.5
            if group['weight_decay']:
                param.mul_(1.0 - group['lr'] * group['weight_decay'])
            param.add_(update, alpha=-group['lr'] * scale)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group['betas']
        for param in group['params']:
            if param.grad is None:
                continue
            state = self.state[param]
            if 'step' not in state:
                state['step'] = torch.zeros((), dtype=torch.float32)
                state['exp_avg'] = torch.zeros_like(param)
                state['exp_avg_sq'] = torch.zeros_like(param)
            state['step'] += 1
            step = state['step'].item()  # a CPU scalar, so no device sync
            state['exp_avg'].lerp_(param.grad, 1.0 - beta1)
            state['exp_avg_sq'].mul_(beta2).addcmul_(param.grad, param.grad, value=1.0 - beta2)
            bias_correction1 = 1.0 - beta1**step
            bias_correction2 = 1.0 - beta2**step
            denom = (state['exp_avg_sq'] / bias_correction2).sqrt_().add_(group['eps'])
            if group['weight_decay']:
                param.mul_(1.0 - group['lr'] * group['weight_decay'])
            param.addcdiv_(state['exp_avg'], denom, value=-group['lr'] / bias_correction1)


def split_muon_params(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter],
                                                       list[torch.nn.Parameter]]:
    """Split trainable parameters into (Muon matrices, AdamW matrices, AdamW vectors).

    Muon takes the 2-D weights inside the transformer blocks (c_attn, c_proj, c_fc). AdamW takes the
    token embedding / tied head and the position embeddings (2-D, decayed) and all gains and biases
    (1-D, not decayed). A tied parameter is listed once.
    """
    muon, adamw_matrices, adamw_vectors = [], [], []
    for name, param in model.named_parameters():  # yields a tied parameter once
        if not param.requires_grad:
            continue
        if param.dim() == 2 and _BLOCK_PARAM.search(name):
            muon.append(param)
        elif param.dim() >= 2:
            adamw_matrices.append(param)
        else:
            adamw_vectors.append(param)
    return muon, adamw_matrices, adamw_vectors


def build_muon_optimizer(model: torch.nn.Module, muon_lr: float = 0.02, muon_momentum: float = 0.95,
                         muon_weight_decay: float = 0.0, adamw_lr: float = 6e-4,
                         adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                         adamw_weight_decay: float = 0.1, nesterov: bool = True, ns_steps: int = 5) -> MuonWithAdamW:
    """Build `MuonWithAdamW` with three groups: Muon matrices, AdamW matrices (decayed), AdamW vectors.

    The AdamW groups match `gpt2_composer.optim.build_optimizer`: weight decay on embeddings, none on
    gains and biases. Group order is fixed (Muon, AdamW decay, AdamW no decay) so that optimizer
    state in a checkpoint lines up on resume.

    Args:
        model: a GPT or ComposerGPT; parameters are split by `split_muon_params`.
        muon_lr: peak lr of the Muon groups; Composer's schedule scales it like the AdamW lr.
        muon_momentum: Muon's SGD momentum.
        muon_weight_decay: decoupled weight decay of the Muon matrices.
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: AdamW settings for the other parameters.
        nesterov: use Nesterov momentum in Muon.
        ns_steps: Newton-Schulz iterations per Muon update.
    """
    muon, adamw_matrices, adamw_vectors = split_muon_params(model)
    if not muon:
        warnings.warn(NoEffectWarning('build_muon_optimizer found no 2-D weights inside transformer blocks, '
                                      'so every parameter gets AdamW.'))
    groups = [
        {'params': muon, 'use_muon': True, 'lr': muon_lr, 'momentum': muon_momentum,
         'weight_decay': muon_weight_decay},
        {'params': adamw_matrices, 'use_muon': False, 'lr': adamw_lr, 'weight_decay': adamw_weight_decay},
        {'params': adamw_vectors, 'use_muon': False, 'lr': adamw_lr, 'weight_decay': 0.0},
    ]
    return MuonWithAdamW(groups, lr=muon_lr, momentum=muon_momentum, nesterov=nesterov, ns_steps=ns_steps,
                         adamw_betas=adamw_betas, adamw_eps=adamw_eps)
