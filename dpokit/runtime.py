"""Process-level settings that make training on CPU faster.

glibc's malloc gives freed blocks above its mmap threshold back to the OS and trims the heap
top as soon as it is free. A training step frees and re-allocates the same few hundred MB of
activations every step, so by default each step mmaps, page-faults and zeroes them again:
measured on 2 cores, ~20% of a DPO step's CPU time was `sys`. Raising the mmap threshold to
its maximum and the trim threshold far above a step's churn keeps those pages in the process
(measured on 2 cores: +25% pairs/s for dpokit's DPO step, and +37-50% for TRL's given the same
setting; benchmarks/README.md). Peak RSS stays about the same: the pages are reused, not added.

The opposite, for runs that ask for low memory (`tune_malloc=false`): glibc's default mmap
threshold is dynamic: once a block it mmapped is freed, every block up to that size (at most
32 MiB) comes from the heap instead, where long-lived small blocks pin the freed space between
them and only the heap's top is ever returned. Measured on the bundled 135M model (LoRA,
gradient checkpointing, batch 4): malloc's in-use bytes peaked at 0.47 GB while its heap grew
to 1.13 GB within three steps. `lean_malloc` fixes the threshold at 256 KiB (the dynamic
adjustment is off once it is set), so activations are mmapped and unmapped as they are freed,
and trims the heap top above 1 MiB: the same run peaked 0.63 GB lower (1.30 GB instead of
1.94 GB RSS), at the cost of page faults on every large allocation (slower steps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
# glibc caps the mmap threshold at 32 MiB on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); mallopt
# takes an int, so the trim threshold can be at most 2 GiB - 1.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1
TOP_PAD = 256 * 1024 * 1024
# lean_malloc: large blocks mmapped (returned on free), the heap top trimmed early, glibc's
# default top pad (128 KiB) restored in case tune_malloc raised it earlier in this process.
LEAN_MMAP_THRESHOLD = 256 * 1024
LEAN_TRIM_THRESHOLD = 1024 * 1024
LEAN_TOP_PAD = 128 * 1024

_tuned = False


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def tune_malloc() -> bool:
    """Keep freed memory in the process (see module docstring). Returns True when glibc
    accepted every setting, False where there is no glibc (macOS, musl) or it refused one.
    Safe to call more than once."""
    global _tuned
    if _tuned:
        return True
    libc = _libc()
    if libc is None:
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    ok = all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in settings)
    if not ok:
        log.warning("glibc refused a malloc setting; training runs with the default allocator behaviour")
    _tuned = ok
    return ok


def lean_malloc() -> bool:
    """Hand freed memory back to the OS promptly (see module docstring), then return what the
    heap holds free now (malloc_trim). True when glibc accepted every setting, False where
    there is no glibc or it refused one."""
    global _tuned
    libc = _libc()
    if libc is None:
        return False
    _tuned = False  # a later tune_malloc() must apply its settings again
    settings = ((M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD), (M_TRIM_THRESHOLD, LEAN_TRIM_THRESHOLD), (M_TOP_PAD, LEAN_TOP_PAD))
    ok = all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in settings)
    if not ok:
        log.warning("glibc refused a malloc setting; freed memory may stay in the process")
    libc.malloc_trim(ctypes.c_size_t(0))
    return ok


def configure_malloc(tune: bool) -> bool:
    """The process's malloc for a run: `tune_malloc` (speed) when `tune`, else `lean_malloc`
    (memory). The one place a run's `tune_malloc` setting is applied."""
    return tune_malloc() if tune else lean_malloc()
