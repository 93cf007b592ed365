"""Process-wide settings for speed on CPUs.

glibc's ``malloc`` hands every block above a moving threshold (128 KiB at first) to ``mmap`` and gives freed
memory at the top of the heap back to the system. A training step allocates and frees the same large activation
tensors again and again, so each step pays for fresh pages: page faults and zeroing that show up as system time.
Keeping blocks up to 32 MiB on the heap and up to 1 GiB of freed memory there cut it from 53 s to 31 s in a run of
``benchmarks/joint_step.py`` at SD 1.5's size, and the step's time by 12 %, at the price of a resident size that
stays near its peak (as a GPU allocator's cache does). jemalloc or tcmalloc (``LD_PRELOAD``) do the same job where
they are installed.

The ``uniemo`` command and the benchmarks call :func:`tune_allocator` at start; ``UNIEMO_TUNE_MALLOC=0`` turns it
off. It is a no-op outside Linux/glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024


def tune_allocator() -> bool:
    """Sets glibc's mmap and trim thresholds (see the module's text); returns whether they were set."""
    if os.environ.get("UNIEMO_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, …)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def default_device(device: str | None = None) -> str:
    """``device`` when given, else ``cuda`` where a GPU is visible and ``cpu`` otherwise."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
