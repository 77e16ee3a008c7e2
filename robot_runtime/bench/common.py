"""Shared pieces of the benchmarks: percentiles, the machine's description, output."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np


def percentiles_us(samples_s: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples_s) * 1e6
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2))
        print(f"wrote {path}")


def verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "met" if ok else "MISSED"
