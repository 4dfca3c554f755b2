"""Process-wide settings for fast CPU work: glibc's allocator keeps freed memory for reuse.

Why: PyTorch on a CPU allocates every activation tensor with ``malloc`` and frees it after use. glibc's
``malloc`` serves an allocation above its mmap threshold (at most 32 MiB by default; one activation of a
192 px EfficientNet in a batch of 128 is about 450 MiB) with a fresh ``mmap`` and returns it to the kernel on
``free``, so every forward pass touches new pages, each zeroed by the kernel on its first write (a page
fault). Smaller allocations come from the heap, whose free top is also returned to the kernel beyond the
trim threshold. On the 2-core development machine this kernel work was most of the time of BehaveNet on
192 px crops (one thread, medians of 3 runs): 18 against 89 frames/s at inference, 26 against 55 crops/s in
training (batch 36); SIPEC's Xception on 64 px crops: 285 against 617 frames/s at inference
(``python benchmarks/behavenet_speed.py --allocator keep default --train-steps 10``).

:func:`keep_freed_memory` raises both thresholds with ``mallopt`` (``M_MMAP_THRESHOLD`` 1 GiB,
``M_TRIM_THRESHOLD`` 2 GiB), so freed blocks are reused by the next batch. The cost: the process keeps its
peak memory until it exits rather than handing freed memory back, which for a pipeline job that trains or
infers and exits is the memory it needed anyway. The ``sipec`` command calls it at start; set the
environment variable ``SIPEC_KEEP_FREED_MEMORY=0`` to leave glibc's defaults. On systems without glibc
(macOS, musl) it does nothing; there the environment's allocator (e.g. jemalloc via ``LD_PRELOAD``, as
PyTorch's CPU tuning guide suggests) is the knob.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

ENV = "SIPEC_KEEP_FREED_MEMORY"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
MMAP_THRESHOLD_BYTES = 1 << 30  # 1 GiB: larger single allocations still get their own mapping
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # 2 GiB (mallopt takes a C int)

_applied: bool | None = None


def _glibc():
    """The C library when it is glibc (it exports ``gnu_get_libc_version`` and ``mallopt``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (see the module docstring); True when applied.

    Idempotent; returns False without changing anything when ``SIPEC_KEEP_FREED_MEMORY=0`` is set or the C
    library is not glibc.
    """
    global _applied
    if _applied is not None:
        return _applied
    setting = os.environ.get(ENV, "1").strip().lower()
    if setting in ("0", "false", "no", "off"):
        log.debug("%s=%s: glibc's malloc defaults left as they are", ENV, setting)
        _applied = False
        return False
    libc = _glibc()
    if libc is None:
        log.debug("the C library is not glibc: allocator settings left as they are")
        _applied = False
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and \
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        log.warning("mallopt refused the allocator settings: CPU training and inference may be slower")
    _applied = ok
    return ok
