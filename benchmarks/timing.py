"""Timing shared by the benchmarks: contenders run back to back in one process, several repetitions, and each
repetition's ratio kept, so the spread says how noisy the machine was (min / median / max).

Not a benchmark itself; the scripts beside it import it (``python benchmarks/<name>.py`` puts this folder on
``sys.path``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def alternate(contenders: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each contender per repetition; within a repetition they run one after the other (in the
    given order), so slow and fast minutes of the machine fall on all of them alike."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def spread(values: list[float]) -> dict[str, float]:
    """``{"min", "median", "max"}`` of ``values``."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def ratio_spread(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """min / median / max of the per-repetition ratios ``numerator[i] / denominator[i]``."""
    return spread([a / b for a, b in zip(numerator, denominator, strict=True)])


def fmt(s: dict[str, float], digits: int = 2) -> str:
    """``median (min–max)``."""
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def setup() -> dict[str, object]:
    """What every benchmark does first: the allocator settings the ``uniemo`` command uses
    (``UNIEMO_TUNE_MALLOC=0`` measures without them) and quiet model loading. Returns them for the JSON line."""
    import diffusers
    import torch
    import transformers

    from uniemo.runtime import tune_allocator

    tuned = tune_allocator()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    return {"allocator_tuned": tuned, "threads": torch.get_num_threads()}
