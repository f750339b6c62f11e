"""FLOPs per token and the peak FLOP/s that MFU (model FLOPs utilisation) is measured against.

MFU = (FLOPs the model needs per second at the measured throughput) / (hardware peak FLOP/s).
The model FLOPs follow the PaLM paper (Chowdhery et al. 2022, appendix B) as nanoGPT uses them:

    flops_per_token = 6 * N + 12 * n_layer * n_embd * T

N is the parameter count without position embeddings, which cost no matmul. 6 * N covers the
forward (2 FLOPs per weight) and backward (4) matmuls. 12 * n_layer * n_embd * T counts
attention's QK^T and AV products over a context of T. For GPT-2 124M at T=1024 that is
855,166,464 FLOPs per token. Recomputation (activation checkpointing) is not counted, so this is
MFU and not hardware FLOPs utilisation.
"""

from __future__ import annotations

import time

import torch

from gpt2_composer.model import GPT


def flops_per_token(model: GPT, seq_len: int) -> int:
    """Return training FLOPs (forward + backward) per token at context length `seq_len`."""
    config = model.config
    n_params = model.num_params(exclude_position_embeddings=True)
    return 6 * n_params + 12 * config.n_layer * config.n_embd * seq_len


def measure_matmul_peak(dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 1.0) -> float:
    """Measure this CPU's dense matmul throughput in FLOP/s, the best of repeated `size`-square products.

    This is the ceiling that a CPU recipe's MFU is measured against: the rate torch reaches on a large,
    well-shaped matmul with all the threads it uses. It takes about `seconds` plus a short warm-up.
    """
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG, and so the model's init, alone
    a = torch.randn(size, size, dtype=dtype, generator=generator)
    b = torch.randn(size, size, dtype=dtype, generator=generator)
    for _ in range(3):  # warm up the thread pool and caches
        torch.mm(a, b)
    best = float('inf')
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


if __name__ == '__main__':
    # `python -m gpt2_composer.flops` prints this machine's CPU peaks, for `gpu_flops_available`.
    for name, dtype in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
        peak = measure_matmul_peak(dtype, seconds=2.0)
        print(f'{name}: {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads')
