"""Next-token cross-entropy that needs one logits-sized buffer on CPUs instead of three.

`F.cross_entropy` is log-softmax then negative log-likelihood. On a CPU each of its passes writes a
tensor as large as the logits: the log-softmax output (kept for the backward pass), the gradient
of the log-likelihood (zeros plus one scatter) and the gradient of the log-softmax. At the CPU
recipe's 8 x 256 tokens and 50,257 words each one is 412 MB. `cross_entropy` keeps one number per
token, the log of its row's sum of exponentials. Its backward pass writes softmax minus one-hot
straight into a single buffer, 16 rows at a time, so the rows being worked on stay in the cache.

Why it matters on CPUs: with `keep_freed_memory`, fewer large buffers per step means glibc's heap
stops fragmenting and growing. Each growth faults in fresh pages, and on the 2-core machine single
steps that grew the heap took up to 4 s of system time. That growth, more frequent in Composer's
process, was the gap between Composer and a plain loop (docs/benchmarks.md, section 1).

On other devices `cross_entropy` calls `F.cross_entropy`, whose fused GPU kernel is faster than a
loop over row chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows per chunk: 16 rows of 50,257 fp32 logits are 3.2 MB. Measured at 2,048 x 50,257 on the
# 2-core machine (forward plus backward): 4-16 rows 178-183 ms, 32-64 rows 185-189, 128 rows 200
# and the whole tensor at once 282-288.
ROWS_PER_CHUNK = 16


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean of logsumexp(logits) - logits[target] over rows; gradient (softmax - one_hot) / N."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        lse = logits.new_empty(n)  # (N,) log of each row's sum of exponentials
        for start in range(0, n, ROWS_PER_CHUNK):
            rows = slice(start, start + ROWS_PER_CHUNK)
            torch.logsumexp(logits[rows], dim=-1, out=lse[rows])
        target_logits = logits.gather(1, targets[:, None]).squeeze(1)
        ctx.save_for_backward(logits, targets, lse)
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        n = logits.shape[0]
        grad = torch.empty_like(logits)
        scale = grad_loss / n
        minus_one = logits.new_full((ROWS_PER_CHUNK, 1), -1.0)
        for start in range(0, n, ROWS_PER_CHUNK):
            rows = slice(start, start + ROWS_PER_CHUNK)
            chunk = grad[rows]
            torch.sub(logits[rows], lse[rows, None], out=chunk).exp_()  # softmax of the rows
            chunk.scatter_add_(1, targets[rows, None], minus_one[:chunk.shape[0]])
            chunk.mul_(scale)
        return grad, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy of `logits` (N, V) against class indices `targets` (N,).

    Value and gradient are those of `F.cross_entropy(logits, targets)` for targets in [0, V). There
    is no ignore index, because packed batches have a target at every position.
    """
    if logits.device.type != 'cpu':
        return F.cross_entropy(logits, targets)
    return _ChunkedCrossEntropy.apply(logits, targets.contiguous())
