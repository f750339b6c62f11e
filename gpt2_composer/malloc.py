"""Keep freed memory in the process on CPU runs, so large tensors do not page-fault on every step.

glibc's malloc serves every allocation above 32 MiB (its largest mmap threshold) with a fresh mmap
and returns it to the kernel when it is freed. A CPU training step allocates several such tensors
and frees them again. At batch 8 x 256 with GPT-2's 50,257-word vocabulary, the logits, their
log-softmax and the two gradients of the loss are 412 MB each. So every step the kernel maps and
zeroes those pages anew. On the CPU recipe (2 cores, 20 steps) a quarter of the CPU time was
system time, and `keep_freed_memory` cut a step from 2,039 to 1,458 ms (MFU 53% to 71%).

The cost: memory the process frees stays in it, so its resident size stays at its peak, and the
peak rises because freed blocks are reused less tightly: 2.7 to 4.5 GB in that run. The heap also
kept growing slowly as it fragmented, and each growth faulted in fresh pages again. The chunked
loss in `loss.py` leaves two 412 MB buffers per step instead of four. With it, the same recipe's
heap grew at most twice after the fifth step in runs of 30 to 60 steps, and peak RSS was 2,100
to 2,506 MiB (docs/benchmarks.md, section 1). NOTE: growth is still possible. A loop that only
allocates and frees one 381 MiB tensor grew the heap to 1,556 to 4,226 MiB in 20 iterations.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of returning it to the kernel.

    Allocations then come from the heap (no mmap), and the heap is never trimmed. Applies to the
    whole process from now on. Returns False, changing nothing, where the C library is not glibc.
    """
    name = ctypes.util.find_library('c')
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or one without mallopt (macOS)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1
    # glibc stores the threshold as a size_t, so -1 becomes the largest size: never trim. The largest
    # int, 2**31 - 1, was not enough: once 2 GiB at the top of the heap were free, malloc gave them
    # back, and later steps faulted them in again. One 44-step run of the CPU recipe gave back 1.2 GB
    # twice. The steps that grew the heap again took 0.1 to 2.7 s of system time each.
    ok = mallopt(M_TRIM_THRESHOLD, -1) == 1 and ok
    if not ok:
        log.warning('keep_freed_memory: mallopt failed (a C library other than glibc?), so malloc keeps its '
                    'defaults. Set keep_freed_memory=false to skip the attempt.')
    return ok
