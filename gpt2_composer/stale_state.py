"""Remove the shared memory that mosaicml-streaming left behind when a run was killed.

Each StreamingDataset registers its local folders in POSIX shared memory named `NNNNNN_locals`
(streaming 0.13, `streaming.base.shared.prefix`), plus more segments with the same prefix. A run
killed by SIGKILL, or whose process group dies with Python's resource tracker, leaves them behind.
A relaunch then fails on a remote root with "Reused local directory", and on a local root leaks
one more set of segments each time.

streaming's own `clean_stale_shared_memory()` unlinks every registered segment on the machine,
including those of live runs. This module removes only the segments that name this run's local
folders, and only while it holds an exclusive lock that every live gpt2-composer run on those
folders holds shared. So it never touches a live run of this project.

NOTE: a program outside this project takes no lock. If it streams from the same local folders,
its segments count as stale here, so give such a program its own folders.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from typing import IO, Callable, Optional

from streaming.base.constant import BARRIER_FILELOCK, CACHE_FILELOCK, LOCALS, SHM_TO_CLEAN
from streaming.base.shared import SharedMemory
from streaming.base.shared.prefix import _get_path, _unpack_locals

log = logging.getLogger(__name__)

# streaming takes the first prefix that has neither a `locals` segment nor a file lock in the temp
# dir, and it leaves the file locks behind, so used prefixes climb and freed ones leave gaps. The scan
# stops after this many consecutive prefixes with neither.
MAX_PREFIX_GAP = 16

_held_lock: Optional[IO] = None  # kept open for the life of the process, which holds the lock


def _lock_path(local_dirs: list[str]) -> str:
    digest = hashlib.sha1('\0'.join(sorted(local_dirs)).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f'gpt2-composer-{digest}.lock')


def _read_locals(prefix: int) -> Optional[list[str]]:
    """Return the local folders registered under `prefix`, or None if it has no `locals` segment."""
    try:
        shm = SharedMemory(_get_path(prefix, LOCALS), create=False, auto_cleanup=False)
    except FileNotFoundError:
        return None
    try:
        their_locals, _ = _unpack_locals(bytes(shm.buf))
    finally:
        shm.cleanup()  # closes without unlinking: the segment may belong to a live run
    return their_locals


def _unlink_prefix(prefix: int) -> list[str]:
    """Unlink every streaming segment and temp-dir file lock of `prefix`; return the names removed."""
    import _posixshmem  # CPython's shm_unlink; the module exists on Linux and macOS

    removed = []
    for name in (_get_path(prefix, shm_name) for shm_name in SHM_TO_CLEAN):
        try:
            _posixshmem.shm_unlink('/' + name)
            removed.append(name)
        except FileNotFoundError:
            continue
    for lock_name in (BARRIER_FILELOCK, CACHE_FILELOCK):
        path = os.path.join(tempfile.gettempdir(), _get_path(prefix, lock_name))
        if os.path.exists(path):
            os.remove(path)
            removed.append(path)
    return removed


def _has_file_lock(prefix: int) -> bool:
    return any(os.path.exists(os.path.join(tempfile.gettempdir(), _get_path(prefix, name)))
               for name in (BARRIER_FILELOCK, CACHE_FILELOCK))


def remove_prefixes(should_remove: Callable[[list[str]], bool]) -> list[str]:
    """Unlink the streaming segments of every prefix whose registered local folders `should_remove` accepts.

    The test suite uses it to clear what earlier test sessions left. streaming 0.13 opens, and keeps
    open, every other run's `locals` segment each time it builds a dataset. Leftovers therefore pile
    up into "Too many open files" over a session that builds hundreds of datasets.

    Returns:
        The names of the segments and file locks removed.
    """
    removed, gap, prefix = [], 0, 0
    while gap < MAX_PREFIX_GAP:
        their_locals = _read_locals(prefix)
        gap = gap + 1 if their_locals is None and not _has_file_lock(prefix) else 0
        if their_locals and should_remove(their_locals):
            removed += _unlink_prefix(prefix)
        prefix += 1
    return removed


def find_stale_prefixes(local_dirs: list[str]) -> list[int]:
    """Return the streaming prefixes whose registered local folders overlap `local_dirs`."""
    wanted = {os.path.abspath(d) for d in local_dirs}
    found, gap, prefix = [], 0, 0
    while gap < MAX_PREFIX_GAP:
        their_locals = _read_locals(prefix)
        gap = gap + 1 if their_locals is None and not _has_file_lock(prefix) else 0
        if their_locals is not None and wanted.intersection(their_locals):
            found.append(prefix)
        prefix += 1
    return found


def claim_local_dirs(local_dirs: list[str]) -> list[str]:
    """Hold a shared lock on `local_dirs` for this process's life, first removing segments killed runs left.

    Call it on local rank 0 before any StreamingDataset is built, with other ranks waiting at a barrier.
    Cleans up only when no other gpt2-composer process holds the lock, so only when every segment that
    names these folders is stale.

    Returns:
        The names of the segments and file locks removed.
    """
    global _held_lock
    lock_file = open(_lock_path(local_dirs), 'a+', encoding='utf-8')
    removed: list[str] = []
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info('Another run streams from %s; leaving its shared memory alone', ', '.join(local_dirs))
    else:
        for prefix in find_stale_prefixes(local_dirs):
            removed += _unlink_prefix(prefix)
        if removed:
            log.warning('Removed shared memory and file locks left by a killed run: %s', ', '.join(removed))
    fcntl.flock(lock_file, fcntl.LOCK_SH)  # from exclusive, a downgrade; otherwise waits for a cleanup in progress
    _held_lock = lock_file
    return removed
