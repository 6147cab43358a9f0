"""How many torch threads training gets: every core when the machine is idle, fewer when other work holds cores.

Two OpenMP threads on a 2-core machine whose other core is busy spin at every barrier: ``benchmarks/quality.py``
measured 18 to 33 s per SmolLM2 step with 2 threads against 1.35 s with 1. So the pipeline (the train node) and
the benchmarks ask :func:`choose_threads` before they start, and ``ADAPTER_REGISTRY_THREADS=N`` overrides it.

The cores other work holds are measured over a short window from ``/proc/stat`` (busy time of the whole machine
less this process's own CPU time), so the pipeline's own work just before does not count; where ``/proc/stat``
cannot be read, the 1-minute load average stands in for it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

THREADS_VARIABLE = "ADAPTER_REGISTRY_THREADS"
IDLE_BELOW = 0.5  # cores busy with other work below which the machine counts as idle


@dataclass(frozen=True)
class ThreadChoice:
    """The torch threads chosen, and why (logged by the pipeline)."""

    threads: int
    cores: int
    others_busy: float | None  # cores other processes kept busy (None: given by the environment)
    reason: str

    def __str__(self) -> str:
        return f"{self.threads} torch thread{'s' if self.threads != 1 else ''} ({self.reason})"


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat, or None where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            fields = [float(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def others_busy_cores(window_s: float = 1.0) -> float:
    """How many cores other processes keep busy: measured over ``window_s`` (this process's own CPU time left out),
    else the 1-minute load average."""
    cores = os.cpu_count() or 1
    before, own_before, began = _cpu_times(), time.process_time(), time.perf_counter()
    if before is not None:
        time.sleep(window_s)
        after, own = _cpu_times(), time.process_time() - own_before
        elapsed = time.perf_counter() - began
        if after is not None and after[1] > before[1]:
            busy_share = (after[0] - before[0]) / (after[1] - before[1])  # of all cores
            return max(0.0, round(busy_share * cores - own / elapsed, 2))
    return round(os.getloadavg()[0], 2)


def threads_for(cores: int, others_busy: float) -> int:
    """Every core when others use less than half of one; else the cores they leave free (at least one)."""
    if others_busy < IDLE_BELOW:
        return cores
    return max(1, cores - math.ceil(others_busy))


def choose_threads(requested: int | None = None, window_s: float = 1.0) -> ThreadChoice:
    """The torch threads to train with: ``requested`` (a benchmark's ``--threads``), else
    ``$ADAPTER_REGISTRY_THREADS``, else :func:`threads_for` the cores other work leaves free right now."""
    cores = os.cpu_count() or 1
    if requested:
        return ThreadChoice(requested, cores, None, "asked for")
    given = os.environ.get(THREADS_VARIABLE, "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise ValueError(
                f"{THREADS_VARIABLE}={given!r} is not a number of threads; e.g. {THREADS_VARIABLE}=1"
            )
        return ThreadChoice(int(given), cores, None, f"{THREADS_VARIABLE}={given}")
    busy = others_busy_cores(window_s)
    threads = threads_for(cores, busy)
    state = "idle" if busy < IDLE_BELOW else f"other work keeps {busy:g} of them busy"
    return ThreadChoice(threads, cores, busy, f"{cores} cores, {state}; set {THREADS_VARIABLE}=N to choose")


def use_threads(requested: int | None = None) -> ThreadChoice:
    """:func:`choose_threads`, then ``torch.set_num_threads`` with it (for this process from now on)."""
    import torch

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    return choice
