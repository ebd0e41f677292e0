"""Handing freed heap pages back to the system between a run's large stages.

glibc's malloc serves large blocks with mmap at first, but every large block freed raises its
mmap threshold (up to 32 MiB), so the near search's many temporary numpy arrays of a few MiB soon
come from the heap. Freed, they leave holes under smaller live objects that the heap cannot give
back by shrinking, and the process keeps them resident: at 1M rows with views, the view search's
group left ~60 MiB that the stages after it never used (bench.stage_memory, one local process).
`malloc_trim(0)` returns the free pages inside the heap (madvise), at the cost of a pass over it
(0.05-1 ms over a 300 MiB heap here): called once per search group and once per copied table
file, never per row. Harmless on Dataflow's workers too, where it was not measured.

Public function: `release_freed_memory()`: returns the heap's free pages to the system; a no-op
where the C library has no malloc_trim (musl, macOS).
"""

from __future__ import annotations

import ctypes

__all__ = ["release_freed_memory"]


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim(0)); never raises."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # no such function in this C library: nothing to release
        pass
