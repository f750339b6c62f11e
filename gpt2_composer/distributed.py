"""Sharded training checks and the gloo gradient-average fix for Composer's FSDP2 on CPUs.

Composer 0.32 runs FSDP v1 by default, which calls CUDA and fails on a CPU. Its FSDP2 path
(`FSDP_VERSION=2`, torch's `fully_shard`) runs on CPUs over gloo, with one defect fixed here:

FSDP2 averages gradients with `reduce_scatter_tensor(op=ReduceOp.AVG)` for fp32 and bf16
(torch 2.7, `_fsdp_collectives.foreach_reduce`), leaving the division to the backend. NCCL divides.
Gloo's reduce-scatter (torch 2.7, `ProcessGroupGloo::reduce_scatter_tensor_coalesced`) is an
all-reduce of a copy that does not apply the AVG op and returns the sum, although gloo's own
all_reduce rejects AVG. The sharded gradients then come out `world_size` times larger than under
data parallelism: a larger clipped norm, and a different update wherever clipping does not apply.
`correct_gloo_gradient_average` probes the backend once and, only where it sums, divides each
reduced gradient shard by the world size in FSDP2's post-reduce hook.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch
import torch.distributed as torch_dist
from torch.distributed.tensor import DTensor

from gpt2_composer.config import ConfigError
from gpt2_composer.model import GPT

log = logging.getLogger(__name__)


def check_fsdp_runs_here(fsdp: Optional[dict[str, Any]], device: str) -> None:
    """Raise ConfigError when the recipe requests FSDP v1 on a CPU, where Composer's v1 path calls CUDA."""
    if not fsdp or device != 'cpu' or os.environ.get('FSDP_VERSION', '1') == '2':
        return
    raise ConfigError('fsdp is set and this run is on the CPU, where Composer\'s FSDP v1 fails (it calls CUDA). '
                      'Use FSDP2, which runs over gloo: FSDP_VERSION=2 composer -n 2 -m gpt2_composer.train ... '
                      'or remove the fsdp section (fsdp=null) for plain data parallelism.')


def reduce_scatter_average_sums(group: torch_dist.ProcessGroup) -> bool:
    """Tell whether `reduce_scatter_tensor(op=AVG)` on `group` returns the sum instead of the mean.

    One 2-element-per-rank collective; call it once at start-up, not per step.
    """
    world_size = torch_dist.get_world_size(group)
    values = torch.ones(world_size * 2)
    output = torch.empty(2)
    torch_dist.reduce_scatter_tensor(output, values, op=torch_dist.ReduceOp.AVG, group=group)
    return bool(torch.allclose(output, torch.full_like(output, float(world_size)))) and world_size > 1


def _fsdp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule  # torch >= 2.6 exports fully_shard's module class here
    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def _shard_group(module: torch.nn.Module) -> Optional[torch_dist.ProcessGroup]:
    for param in module.parameters():
        if isinstance(param, DTensor):
            return param.device_mesh.get_group()
    return None


def correct_gloo_gradient_average(model: torch.nn.Module) -> int:
    """Divide FSDP2's reduced gradients by the world size where the gloo backend summed instead of averaging.

    Returns the number of FSDP2 modules that received the correcting hook: 0 without FSDP2, on NCCL,
    or on a gloo build whose reduce-scatter averages.
    """
    modules = _fsdp_modules(model)
    group = _shard_group(modules[0]) if modules else None
    if group is None or torch_dist.get_backend(group) != 'gloo' or not reduce_scatter_average_sums(group):
        return 0
    world_size = torch_dist.get_world_size(group)

    def divide_by_world_size(reduced_shard: torch.Tensor) -> None:
        reduced_shard.div_(world_size)

    for module in modules:
        module.set_all_reduce_hook(divide_by_world_size)
    log.info('gloo reduce-scatter summed instead of averaging; dividing FSDP2 gradients by %d', world_size)
    return len(modules)


def check_embedding_tied(model: torch.nn.Module) -> None:
    """Raise RuntimeError unless the token embedding and the output head are one parameter.

    Sharding, checkpoint loading and `torch.compile` must keep GPT-2's weight tying. A copy would train
    the two matrices apart, and GPT-2 124M would count 38.6M parameters too many.
    """
    gpt = next(module for module in model.modules() if isinstance(module, GPT))  # under DDP, compile, FSDP2
    if gpt.transformer.wte.weight is not gpt.lm_head.weight:
        raise RuntimeError('transformer.wte.weight and lm_head.weight are separate parameters after '
                           'sharding or loading; GPT-2 ties them.')
