"""Which machine a time was measured on, and how fast it is.

Training times and benchmark figures are compared across sessions that land on different machines of the
same nominal size (2 cores). The same 3,000-step vision stage of the organism ran at 3.9 steps/s on one and
2.0 on another, so a time target read without the machine's speed reads the machine, not the recipe.
:func:`machine_record` is what training records and benchmark results store: the platform, the CPU model,
the library versions, and :func:`matmul_speed`, a fixed workload shaped like the organism's own matrix
products, to put two recorded times on one scale (time × speed is roughly constant across machines).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

#: the workload of :func:`matmul_speed`: a batch of tokens through one MLP projection of the organism's
#: language model (6144 tokens a step, hidden 192, MLP 512), in float32 as it trains
SPEED_SHAPE = (6144, 192, 512)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name as the kernel reports it (``platform.processor()`` is often empty on Linux)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        return None
    return None


def machine_info() -> dict:
    """Where a figure was measured: platform, CPU model and count, and library versions that move timings."""
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
    for module in ("torch", "numpy", "PIL"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def matmul_speed(seconds: float = 2.0, shape: tuple[int, int, int] = SPEED_SHAPE) -> float:
    """GFLOP/s of repeated float32 products of ``shape`` (tokens × hidden @ hidden × out) with torch's
    default threads, timed for about ``seconds`` after one warm-up: a speed on the organism's own scale
    (small matrices, where per-call overhead counts as well as FLOPs). Measured once, beside a training or
    benchmark run; it reads whatever else shares the cores, so take it with the cores free."""
    import torch

    tokens, hidden, out = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(tokens, hidden, generator=generator)
    b = torch.randn(hidden, out, generator=generator)
    a @ b  # warm-up: thread pool and allocator
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls == 0:
        a @ b
        calls += 1
    return round(2 * tokens * hidden * out * calls / elapsed / 1e9, 2)


def machine_record(seconds: float = 2.0) -> dict:
    """:func:`machine_info` plus :func:`matmul_speed` (``matmul_gflops``): what a training record stores."""
    return {**machine_info(), "matmul_gflops": matmul_speed(seconds)}


def speed_line(machine: dict | None) -> str:
    """``"AMD EPYC, 2 cores, matmul 41.3 GFLOP/s"`` for a card's time line; ``"2 cores"`` for a record
    that predates the machine record."""
    if not machine:
        return "2 cores"
    parts = [machine.get("cpu_model") or machine.get("processor") or None,
             f"{machine['cpu_count']} cores" if machine.get("cpu_count") else None,
             f"matmul {machine['matmul_gflops']:.1f} GFLOP/s" if machine.get("matmul_gflops") else None]
    return ", ".join(p for p in parts if p) or "2 cores"
