"""Any Python callable as the slow process's policy: loaded by name, called with a timeout, and
its answer checked before it can become an action chunk.

The contract (docs/slow_process.md): ``policy(observation) -> chunk``, where ``observation`` is

    {"observation.state": float32 (6,)   five arm joints in degrees, gripper 0..100,
     "observation.images.<camera>": uint8 (H, W, 3) for each camera of the frame ("wrist"...),
     "task": str,
     "timestamp": float                  the frame's capture time, seconds}

and ``chunk`` a float array ``[T, 6]`` in the same units, row 0 meant for the capture time, rows
``policy.dt`` seconds apart (1/50 s when the object has no ``dt``), or None for "no chunk".

What can go wrong never reaches the arm: a call that raises, one that runs past ``timeout_s``
(the worker thread is left to finish, and no new call starts until it has), an answer that is
not a finite ``[1..max_rows, 6]`` array. Each is refused and counted by reason
(``error``, ``timeout``, ``busy``, ``dtype``, ``shape``, ``chunk_size``, ``non_finite``).
"""

from __future__ import annotations

import importlib
import math
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_DT_S = 1.0 / 50
MIN_DT_S, MAX_DT_S = 1e-3, 1.0  # the runtime's limits (messages.MessageLimits)
N_JOINTS = 6


class PolicyRejected(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_chunk(out: Any, n_joints: int = N_JOINTS, max_rows: int = 200) -> np.ndarray | None:
    """A policy's answer as a float32 ``[T, n_joints]`` chunk (None stays None); otherwise
    PolicyRejected with a reason. Pure."""
    if out is None:
        return None
    if hasattr(out, "detach"):  # a torch tensor, without importing torch
        out = out.detach().cpu().numpy()
    try:
        chunk = np.asarray(out)
    except (TypeError, ValueError) as e:
        raise PolicyRejected("dtype", f"the policy returned {type(out).__name__}: {e}") from None
    if chunk.dtype.kind not in "fiu":
        raise PolicyRejected("dtype", f"the policy returned dtype {chunk.dtype}, not numbers")
    if chunk.ndim != 2 or chunk.shape[1] != n_joints:
        raise PolicyRejected(
            "shape", f"the policy returned shape {list(chunk.shape)}, expected [T, {n_joints}]"
        )
    if not 1 <= chunk.shape[0] <= max_rows:
        raise PolicyRejected("chunk_size", f"the chunk has {chunk.shape[0]} rows (1..{max_rows})")
    chunk = chunk.astype(np.float32)
    if not np.all(np.isfinite(chunk)):
        raise PolicyRejected("non_finite", "the chunk holds NaN or infinity")
    return chunk


def policy_dt(policy: object) -> float:
    """The seconds between a policy's chunk rows: its ``dt`` attribute, else 1/50 s."""
    dt = getattr(policy, "dt", None)
    if dt is None:
        return DEFAULT_DT_S
    if isinstance(dt, bool) or not isinstance(dt, int | float) or not math.isfinite(dt):
        raise ValueError(f"the policy's dt {dt!r} is not a finite number of seconds")
    if not MIN_DT_S <= dt <= MAX_DT_S:
        raise ValueError(f"the policy's dt {dt} s is outside {MIN_DT_S}..{MAX_DT_S} s")
    return float(dt)


class _Call:
    def __init__(self, observation: dict):
        self.observation = observation
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class PolicyRunner:
    """Calls ``policy`` on a worker thread of its own (a daemon: a hung policy cannot keep the
    process alive) and returns a checked chunk or None; refusals are counted in
    ``rejections`` by reason, the last one in ``last_rejection``."""

    def __init__(
        self,
        policy: Callable[[dict], Any],
        timeout_s: float = 2.0,
        max_rows: int = 200,
        on_reject: Callable[[str, str], None] | None = None,
    ):
        if not timeout_s > 0:
            raise ValueError(f"policy timeout {timeout_s!r} s must be positive")
        self.policy, self.timeout_s, self.max_rows = policy, timeout_s, max_rows
        self.dt = policy_dt(policy)
        self.on_reject = on_reject
        self.calls = self.chunks = self.no_chunk = 0
        self.rejections: dict[str, int] = {}
        self.last_rejection = ""
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._running: _Call | None = None  # a call that timed out and is still running
        self._thread = threading.Thread(target=self._work, name="policy", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            call = self._calls.get()
            try:
                call.result = self.policy(call.observation)
            except BaseException as e:  # noqa: BLE001 - the policy's failure is counted, not ours
                call.error = e
            call.done.set()

    def __call__(self, observation: dict) -> np.ndarray | None:
        if self._running is not None and not self._running.done.is_set():
            self._reject("busy", "the policy is still running a call that timed out")
            return None
        self._running = None
        self.calls += 1
        call = _Call(observation)
        self._calls.put(call)
        if not call.done.wait(self.timeout_s):
            self._running = call
            self._reject("timeout", f"the policy did not answer in {self.timeout_s:g} s")
            return None
        if call.error is not None:
            e = call.error
            self._reject("error", f"the policy raised {type(e).__name__}: {e}")
            return None
        try:
            chunk = check_chunk(call.result, N_JOINTS, self.max_rows)
        except PolicyRejected as e:
            self._reject(e.reason, str(e))
            return None
        if chunk is None:
            self.no_chunk += 1
        else:
            self.chunks += 1
        return chunk

    def _reject(self, reason: str, message: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        self.last_rejection = f"{reason}: {message}"[:300]
        if self.on_reject is not None:
            self.on_reject(reason, message)

    def counts(self) -> dict[str, int]:
        return {"calls": self.calls, "chunks": self.chunks, "no_chunk": self.no_chunk}


def parse_policy_args(pairs: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> keyword strings for the factory."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--policy-arg {pair!r} is not KEY=VALUE with KEY a Python name")
        out[key] = value
    return out


def load_policy(spec: str, kwargs: dict[str, str] | None = None) -> Callable[[dict], Any]:
    """``module:factory`` (the factory called with ``kwargs``, keyword strings) or
    ``lerobot:PATH`` (a LeRobot checkpoint folder; needs lerobot installed)."""
    kwargs = kwargs or {}
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"--policy {spec!r} is not MODULE:FACTORY or lerobot:PATH (or, where a command "
            "offers it, scripted)"
        )
    if module_name == "lerobot":
        from .lerobot_policy import load_lerobot_policy

        return load_lerobot_policy(attr, **kwargs)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--policy {spec!r}: cannot import {module_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--policy {spec!r}: {module_name} has no callable {attr!r}")
    try:
        policy = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"--policy {spec!r}: the factory refused its arguments: {e}") from None
    if not callable(policy):
        raise ValueError(
            f"--policy {spec!r}: the factory returned {type(policy).__name__}, "
            "not a callable policy(observation) -> chunk"
        )
    policy_dt(policy)  # a bad dt is an error now, not at the first chunk
    return policy
