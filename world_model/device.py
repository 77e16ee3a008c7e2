"""Where training runs and in what precision: device names, autocast, torch.compile.

Everything else takes a ``torch.device`` (passed in, never global). The defaults keep the
project on the CPU in float32; a GPU is used only when asked (``--device cuda``) or when
``auto`` finds one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` -> cuda where torch sees a GPU, else cpu. ``cuda`` with ``local_rank`` (a
    torchrun process) picks that GPU. An unavailable device is a one-line ValueError."""
    if name not in DEVICES:
        raise ValueError(f"--device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA GPU here (try --device auto)")
        index = (local_rank or 0) % torch.cuda.device_count()
        return torch.device("cuda", index)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("--device mps: this torch build or machine has no MPS backend")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32. ``auto``: bfloat16 on CUDA (where its
    matrix units are several times faster than float32), float32 elsewhere (on this project's
    CPUs bfloat16 matmuls are slower, not faster)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "float32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the networks' matrix products. The model keeps the parts that need
    the range or the resolution in float32 itself (see WorldModel.loss): the recurrent state,
    the latent logits, the KL, sampling and every loss."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def maybe_compile(fn: Callable, enabled: bool) -> Callable:
    """``torch.compile(fn)`` when enabled (the first calls compile: seconds to minutes)."""
    if not enabled:
        return fn
    return torch.compile(fn, dynamic=False)


def describe(device: torch.device, dtype: torch.dtype | None, compiled: bool) -> str:
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu":
        name += f" ({torch.get_num_threads()} threads)"
    precision = "bfloat16 autocast" if dtype is not None else "float32"
    return f"{name}, {precision}{', compiled' if compiled else ''}"
