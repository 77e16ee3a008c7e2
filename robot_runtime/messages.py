"""What the runtime accepts from the slow process: every field checked before anything acts on it.

``link.decode`` already guarantees a well-formed message (a JSON header, frames that match their
declared dtypes and shapes). This module checks what a well-formed message *says*: observation
arrays of the model's sizes with finite values, capture times within a window of now, action
chunks of 1..``max_chunk_rows`` finite rows whose ``t_first`` and ``dt`` are finite numbers in
range, and a span the loop can hold. A violation raises ``Rejected`` with a reason code (for
counting) and a sentence (for people). Pure: the caller passes ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .link import Message


class Rejected(ValueError):
    """A message that must not be acted on; ``reason`` is a short code to count by."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MessageLimits:
    """Bounds on what one message may ask of the runtime."""

    period_s: float  # the loop's tick
    max_future_s: float = 0.5  # capture or chunk times this far ahead of now are refused
    max_age_s: float = 5.0  # ... and this far behind (the estimator's buffer holds ~5 s)
    max_chunk_rows: int = 200
    min_dt_s: float = 1e-3
    max_dt_s: float = 1.0
    max_chunk_s: float = 10.0  # a chunk's span (rows x dt)


@dataclass(frozen=True)
class Chunk:
    actions: np.ndarray  # [rows, joints] float64, joint units
    t_first: float  # time of the first row on the runtime's clock
    dt: float  # seconds between rows
    t_capture: float = math.nan  # the observation it was computed from (the message's)


@dataclass(frozen=True)
class Checked:
    obs: dict[str, np.ndarray] | None
    chunk: Chunk | None
    t_capture: float


class _ChunkMeta(BaseModel):
    # strict: a string, a bool or a list is not a number; NaN and infinities are refused
    model_config = ConfigDict(extra="ignore")
    t_first: float | None = Field(None, strict=True, allow_inf_nan=False)
    dt: float | None = Field(None, strict=True, allow_inf_nan=False)


def _finite_vector(name: str, value: np.ndarray, size: int) -> np.ndarray:
    if value.dtype.kind not in "fiu":
        raise Rejected("dtype", f"field {name!r}: dtype {value.dtype} is not numeric")
    if value.shape != (size,):
        raise Rejected("shape", f"field {name!r}: shape {list(value.shape)}, expected [{size}]")
    value = value.astype(np.float32)
    if not np.all(np.isfinite(value)):
        raise Rejected("non_finite", f"field {name!r} holds NaN or infinity")
    return value


def _check_time(name: str, t: float, now: float, limits: MessageLimits) -> None:
    if not math.isfinite(t):
        raise Rejected("time", f"{name} is not a finite number")
    if t > now + limits.max_future_s:
        raise Rejected("time", f"{name} is {t - now:.3f} s in the future")
    if t < now - limits.max_age_s:
        raise Rejected("time", f"{name} is {now - t:.3f} s old (more than {limits.max_age_s} s)")


def check_chunk(msg: Message, n_joints: int, now: float, limits: MessageLimits) -> Chunk:
    actions = msg.arrays["actions"]
    if actions.dtype.kind not in "fiu":
        raise Rejected("dtype", f"action chunk dtype {actions.dtype} is not numeric")
    if actions.ndim != 2 or actions.shape[1] != n_joints:
        raise Rejected(
            "shape", f"action chunk of shape {list(actions.shape)}, expected [rows, {n_joints}]"
        )
    rows = actions.shape[0]
    if not 1 <= rows <= limits.max_chunk_rows:
        raise Rejected("chunk_size", f"action chunk has {rows} rows (1..{limits.max_chunk_rows})")
    actions = actions.astype(np.float64)
    if not np.all(np.isfinite(actions)):
        raise Rejected("non_finite", "action chunk holds NaN or infinity")
    try:
        meta = _ChunkMeta.model_validate(msg.header.meta)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Rejected("chunk_meta", f"chunk meta {where}: {first['msg']}") from None
    t_first = msg.header.t_capture if meta.t_first is None else meta.t_first
    dt = limits.period_s if meta.dt is None else meta.dt
    _check_time("chunk t_first", t_first, now, limits)
    if not limits.min_dt_s <= dt <= limits.max_dt_s:
        raise Rejected(
            "chunk_meta", f"chunk dt {dt!r} s is outside {limits.min_dt_s}..{limits.max_dt_s} s"
        )
    if (rows - 1) * dt > limits.max_chunk_s:
        raise Rejected(
            "chunk_size",
            f"chunk spans {(rows - 1) * dt:.1f} s (at most {limits.max_chunk_s} s)",
        )
    return Chunk(actions, float(t_first), float(dt), float(msg.header.t_capture))


def check_observation(
    msg: Message,
    obs_dims: dict[str, int],
    n_joints: int,
    now: float,
    limits: MessageLimits,
) -> Checked:
    """An ``obs`` message: the model's observation fields (all of them, or none when the
    message carries only a chunk) and an optional ``actions`` chunk."""
    if msg.kind != "obs":
        raise Rejected("kind", f"unexpected message kind {msg.kind!r} on the observation socket")
    _check_time("t_capture", msg.header.t_capture, now, limits)
    chunk = check_chunk(msg, n_joints, now, limits) if "actions" in msg.arrays else None
    present = [k for k in obs_dims if k in msg.arrays]
    if not present:
        if chunk is None:
            raise Rejected("missing", f"message holds none of the fields {sorted(obs_dims)}")
        return Checked(None, chunk, msg.header.t_capture)
    missing = [k for k in obs_dims if k not in msg.arrays]
    if missing:
        raise Rejected("missing", f"observation lacks fields {missing}")
    obs = {k: _finite_vector(k, msg.arrays[k], n) for k, n in obs_dims.items()}
    return Checked(obs, chunk, msg.header.t_capture)


def check_plan(plan: np.ndarray, min_rows: int, n_joints: int, max_rows: int = 1000) -> np.ndarray:
    """A grasp query's commit plan: ``[H, joints]`` finite numbers, ``min_rows <= H``."""
    if plan.dtype.kind not in "fiu" or plan.ndim != 2 or plan.shape[1] != n_joints:
        raise Rejected(
            "shape", f"plan must be [H, {n_joints}] numbers, got {plan.dtype} {list(plan.shape)}"
        )
    if not min_rows <= plan.shape[0] <= max_rows:
        raise Rejected("shape", f"plan has {plan.shape[0]} rows ({min_rows}..{max_rows})")
    plan = plan.astype(np.float32)
    if not np.all(np.isfinite(plan)):
        raise Rejected("non_finite", "plan holds NaN or infinity")
    return plan


MAX_REPORT_ENTRIES = 16


class _Report(BaseModel):
    # counters by name: short names, non-negative integers (strict: no strings or bools)
    model_config = ConfigDict(extra="ignore")
    counts: dict[str, int] = Field(default_factory=dict, max_length=MAX_REPORT_ENTRIES)
    rejections: dict[str, int] = Field(default_factory=dict, max_length=MAX_REPORT_ENTRIES)


def check_report(msg: Message) -> dict[str, dict[str, int]]:
    """A ``slow_report``: the slow process's own counters (policy calls, chunks, refusals by
    reason), at most 16 of each, names of 1..32 characters, integers >= 0."""
    try:
        report = _Report.model_validate(msg.header.meta, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Rejected("report", f"slow_report {where}: {first['msg']}") from None
    out = {"counts": report.counts, "rejections": report.rejections}
    for group, values in out.items():
        for name, value in values.items():
            if not 1 <= len(name) <= 32 or value < 0:
                raise Rejected("report", f"slow_report {group}: {name[:40]!r}={value} refused")
    return out
