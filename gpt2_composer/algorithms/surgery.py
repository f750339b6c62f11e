"""Helpers shared by the algorithms that change the model: find the GPT, keep the optimizer in step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional, Union

import torch
from torch.optim import Optimizer

from gpt2_composer.model import GPT

Optimizers = Optional[Union[Optimizer, Sequence[Optimizer]]]


def unwrap_gpt(model: torch.nn.Module) -> GPT:
    """Return the `GPT` inside a GPT, a `ComposerGPT`, or either of them wrapped in DDP.

    Raises:
        TypeError: when there is no GPT inside, so the algorithm cannot apply to this model.
    """
    for candidate in (model, getattr(model, 'model', None), getattr(getattr(model, 'module', None), 'model', None)):
        if isinstance(candidate, GPT):
            return candidate
    raise TypeError(f'expected gpt2_composer.model.GPT or a ComposerGPT around it, got {type(model).__name__}; '
                    'the algorithms in gpt2_composer.algorithms only apply to this project\'s GPT-2.')


def _as_list(optimizers: Optimizers) -> list[Optimizer]:
    if optimizers is None:
        return []
    if isinstance(optimizers, Optimizer):
        return [optimizers]
    return list(optimizers)


def _contains(params: Iterable[torch.Tensor], param: torch.Tensor) -> bool:
    return any(p is param for p in params)


def remove_params_from_optimizers(optimizers: Optimizers, params: Iterable[torch.Tensor]) -> None:
    """Drop `params` and their optimizer state from every param group that contains them."""
    params = list(params)
    for optimizer in _as_list(optimizers):
        for group in optimizer.param_groups:
            group['params'] = [p for p in group['params'] if not _contains(params, p)]
        for param in params:
            optimizer.state.pop(param, None)


def add_gains_to_optimizers(optimizers: Optimizers, params: Iterable[torch.Tensor]) -> None:
    """Add new 1-D parameters (norm gains) to the param group of the existing 1-D parameters.

    That group has no weight decay in `gpt2_composer.optim.build_optimizer` and is an AdamW group in
    `build_muon_optimizer`, which is where gains belong. With only 2-D parameters in the optimizer the
    new ones get a group of their own with weight decay 0 and the optimizer's defaults otherwise.

    NOTE: a group added here after the LR scheduler was built would keep a constant lr. Composer builds
    its schedulers after Event.INIT, where the surgery algorithms run, so that does not happen there.
    """
    params = list(params)
    if any(p.dim() != 1 for p in params):
        raise ValueError('add_gains_to_optimizers adds 1-D parameters only; got shapes '
                         f'{[tuple(p.shape) for p in params]}')
    for optimizer in _as_list(optimizers):
        target = None
        for group in optimizer.param_groups:
            if group['params'] and all(p.dim() < 2 for p in group['params']) and not group.get('use_muon', False):
                target = group
                break
        if target is None:
            optimizer.add_param_group({'params': params, 'weight_decay': 0.0})
        else:
            target['params'].extend(params)


def remove_position_embeddings(model: GPT, optimizers: Optimizers) -> bool:
    """Delete `transformer.wpe` and its optimizer entries; return whether there was one to delete."""
    if 'wpe' not in model.transformer:
        return False
    weight = model.transformer.wpe.weight
    del model.transformer['wpe']
    remove_params_from_optimizers(optimizers, [weight])
    return True


def check_no_other_position_encoding(model: GPT, wanted: str) -> None:
    """Raise ValueError if the attention already has a position encoding other than `wanted`.

    ALiBi and rotary embeddings both encode positions inside attention; stacking them is untested
    and each was designed to replace the other.
    """
    attn = model.transformer.h[0].attn
    present = {'alibi': attn.alibi is not None, 'rotary': attn.rotary is not None}
    others = [name for name, on in present.items() if on and name != wanted]
    if others:
        raise ValueError(f'cannot apply {wanted}: the model already uses {others[0]} position encoding, and '
                         'ALiBi and rotary embeddings are alternatives. Enable only one of them.')
