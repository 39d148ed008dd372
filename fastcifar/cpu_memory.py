"""The CPU allocator set for throughput: big blocks reused in the process, in huge pages, never returned per batch.

On a GPU, CUDA's caching allocator hands the next batch the memory the last one freed. On a CPU, glibc serves
every block above 32 MB (a 224 px float batch of 256 is 154 MB) with a fresh `mmap` and gives it back with
`munmap` when freed, so each batch page-faults and zeroes its memory anew. On this project's 2-core VM that cost
a quarter of the CPU time in the kernel and, worse, bursts of 0.2-0.5 s with both cores partly idle (a freed page
handed back to the hypervisor faults in again from the host), which showed up as dips in the benchmark's
windows of every loader at 224 px: not a loader stall, an allocator one.

`configure()` makes glibc keep freed memory in its heap (no mmap for big blocks, no trimming of the heap's top),
the CPU analogue of the caching allocator, and asks torch for transparent huge pages on big tensors (one fault
per 2 MB instead of per 4 KB). Memory freed by a batch is reused by the next; the process's resident size stays
at its peak, as a GPU process's reserved memory does. DataLoader workers forked afterwards inherit both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int): trim only above 2 GiB of free heap top

in_effect: dict | None = None  # what `configure` set, for provenance; None: never called (fastcifar as a library)


def configure() -> dict:
    """Set the process's CPU allocator for throughput (see the module docstring); call before torch allocates.

    Honours a user's own settings: THP_MEM_ALLOC_ENABLE or MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ already
    in the environment leave that part alone. Returns what is in effect, for provenance:
    {"thp": bool, "heap_reuse": bool}; heap_reuse is False where the C library is not glibc.
    """
    global in_effect
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # read by torch at its first CPU allocation
    in_effect = {"thp": os.environ["THP_MEM_ALLOC_ENABLE"] == "1", "heap_reuse": _keep_freed_memory()}
    return in_effect


def _keep_freed_memory() -> bool:
    """mallopt(M_MMAP_MAX, 0) and a top-trim threshold of 2 GiB: True if glibc took both."""
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user tuned glibc already
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt  # glibc (and uclibc) only: musl and macOS have none
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
