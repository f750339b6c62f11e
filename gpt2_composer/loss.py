"""Next-token cross-entropy that needs one logits-sized buffer on CPUs instead of three.

`F.cross_entropy` is log-softmax then negative log-likelihood. On a CPU each of its passes writes a
tensor as large as the logits: the log-softmax output (kept for the backward pass), the gradient
of the log-likelihood (zeros plus one scatter) and the gradient of the log-softmax. At the CPU
recipe's 8 x 256 tokens and 50,257 words each one is 412 MB. `cross_entropy` keeps one number per
token, the log of its row's sum of exponentials. Its backward pass writes softmax minus one-hot
straight into a single buffer, 16 rows at a time, so the rows being worked on stay in the cache.

Why it matters on CPUs: with `keep_freed_memory`, fewer large buffers per step means glibc's heap
fragments and grows far less often. Each growth faults in fresh pages, and on the 2-core machine single
steps that grew the heap took up to 4 s of system time. That growth, more frequent in Composer's
process, was the gap between Composer and a plain loop (docs/benchmarks.md, section 1).

On other devices `cross_entropy` calls `F.cross_entropy`, whose fused GPU kernel is faster than a
loop over row chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Rows per chunk: 16 rows of 50,257 fp32 logits are 3.2 MB. Measured at 2,048 x 50,257 on the
# 2-core machine (forward plus backward, default malloc): 4-16 rows 178-183 ms, 32-64 rows 185-189,
# 128 rows 200 and the whole tensor at once 282-288.
ROWS_PER_CHUNK = 16


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean of logsumexp(logits) - logits[target] over rows; gradient (softmax - one_hot) / N.

    Sums and exponentials run in fp32 or wider, as in `F.cross_entropy`: bf16 or fp16 logits are
    widened one chunk at a time, and only the finished gradient is rounded to their dtype.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        compute_dtype = torch.promote_types(logits.dtype, torch.float32)
        lse = logits.new_empty(n, dtype=compute_dtype)  # (N,) log of each row's sum of exponentials
        for start in range(0, n, ROWS_PER_CHUNK):
            rows = slice(start, start + ROWS_PER_CHUNK)
            torch.logsumexp(logits[rows].to(compute_dtype), dim=-1, out=lse[rows])
        target_logits = logits.gather(1, targets[:, None]).squeeze(1)
        ctx.save_for_backward(logits, targets, lse)
        return (lse - target_logits).mean().to(logits.dtype)

    @staticmethod
    @once_differentiable  # this backward pass is not itself differentiable (no double backward)
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        n = logits.shape[0]
        grad = torch.empty_like(logits)
        scale = grad_loss.to(lse.dtype) / n
        minus_one = lse.new_full((ROWS_PER_CHUNK, 1), -1.0)
        widen = lse.dtype != logits.dtype
        for start in range(0, n, ROWS_PER_CHUNK):
            rows = slice(start, start + ROWS_PER_CHUNK)
            if widen:  # bf16 or fp16 logits: the softmax in fp32, rounded once below
                chunk = logits[rows].to(lse.dtype).sub_(lse[rows, None])
            else:
                chunk = torch.sub(logits[rows], lse[rows, None], out=grad[rows])
            chunk.exp_()  # the rows' softmax
            chunk.scatter_add_(1, targets[rows, None], minus_one[:chunk.shape[0]])
            chunk.mul_(scale)
            if widen:
                grad[rows] = chunk
        return grad, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy of `logits` (N, V) against class indices `targets` (N,).

    Value and gradient are those of `F.cross_entropy(logits, targets)` for targets in [0, V), up to
    rounding. There is no ignore index, because packed batches have a target at every position. The
    gradient cannot itself be differentiated (no double backward).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f'cross_entropy takes logits of shape (N, V) and targets of shape (N,), got '
                         f'{tuple(logits.shape)} and {tuple(targets.shape)}. Flatten (B, T, V) logits '
                         'and (B, T) targets first: logits.reshape(-1, V), targets.reshape(-1).')
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f'cross_entropy takes class indices as targets, got dtype {targets.dtype}. '
                         'Pass integer token ids.')
    if logits.device.type != 'cpu':
        return F.cross_entropy(logits, targets)
    return _ChunkedCrossEntropy.apply(logits, targets.long().contiguous())
