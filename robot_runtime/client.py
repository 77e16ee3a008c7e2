"""The slow-process client: camera frames in; observations, action chunks and reports out; the
runtime's status and clock. A public API: docs/slow_process.md is its wire specification.

    client = SlowClient(camera="tcp://127.0.0.1:5604", obs="tcp://127.0.0.1:5601",
                        query="tcp://127.0.0.1:5602")
    frame = client.wait_frame(1.0)           # Frame: t_capture (runtime clock), state, images
    client.post(frame.t_capture, chunk=actions, dt=0.02)   # [T, 6] degrees, gripper 0..100

Times in every message are on the runtime's clock (CLOCK_MONOTONIC of its machine). On the same
machine that is this process's clock too; elsewhere ``sync_clock()`` estimates the offset
NTP-style over the ``clock`` query (several samples; the one with the shortest round trip wins)
and ``runtime_now()`` / ``to_runtime()`` apply it. Frames stamped by a camera on *this* machine
(``camera_clock="local"``) are moved onto the runtime's clock as they arrive.

CURVE: pass the server's public key file and this client's ``.key_secret`` (``kiwi keys``); any
address that is not loopback requires them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import link

N_JOINTS = 6  # the five arm joints (degrees) and the gripper (0..100), LeRobot's units
MAX_FUTURE_S = 1.0  # a frame stamped later than this ahead of the runtime's now is refused
STATE_FIELD = "state"
REQUIRED_CAMERA = "wrist"
GOLDEN = 0.6180339887  # staggers clock samples evenly over a tick


class FrameError(ValueError):
    """A camera message the slow process refuses; counted and logged, never raised out."""


@dataclass(frozen=True)
class Frame:
    t_capture: float  # seconds, on the runtime's clock
    state: np.ndarray  # [6] float32: joints in degrees, gripper 0..100, read at capture
    images: dict[str, np.ndarray]  # camera name -> uint8 [H, W, 3] RGB (at least "wrist")
    seq: int = 0


def parse_frame(msg: link.Message, max_side: int, now: float) -> Frame:
    """The frame a ``camera`` message carries; FrameError saying what is wrong otherwise.
    ``now`` is the current time on the message's clock (the future check)."""
    if msg.kind != "camera":
        raise FrameError(f"unexpected message kind {msg.kind!r}")
    state = msg.arrays.get(STATE_FIELD)
    if msg.arrays.get(REQUIRED_CAMERA) is None or state is None:
        raise FrameError("camera message without 'wrist' and 'state' arrays")
    images = {}
    for name, image in msg.arrays.items():
        if name == STATE_FIELD:
            continue
        if image.dtype != np.uint8:
            raise FrameError(f"{name}: dtype {image.dtype} is not uint8")
        if image.ndim != 3 or image.shape[2] != 3:
            raise FrameError(f"{name}: shape {image.shape} is not (H, W, 3)")
        if not (1 <= image.shape[0] <= max_side and 1 <= image.shape[1] <= max_side):
            raise FrameError(f"{name}: {image.shape[0]}x{image.shape[1]} is outside 1..{max_side}")
        images[name] = image
    if state.dtype.kind != "f" or state.shape != (N_JOINTS,):
        raise FrameError(f"state: {state.dtype} {state.shape} is not a float ({N_JOINTS},)")
    if not np.all(np.isfinite(state)):
        raise FrameError("state: not all finite")
    if msg.header.t_capture > now + MAX_FUTURE_S:
        raise FrameError(
            f"captured {msg.header.t_capture - now:.3g} s in the future (clock not shared?)"
        )
    return Frame(msg.header.t_capture, state.astype(np.float32), images, msg.header.seq)


def policy_observation(frame: Frame, task: str) -> dict:
    """A policy's input (the contract of policy_runner.py and docs/slow_process.md):
    ``observation.state`` float32 (6,), ``observation.images.<camera>`` uint8 (H, W, 3) for
    each camera of the frame, ``task``, and ``timestamp`` (the capture time, seconds)."""
    obs: dict = {"observation.state": frame.state.astype(np.float32)}
    for name, image in frame.images.items():
        obs[f"observation.images.{name}"] = image
    obs["task"] = task
    obs["timestamp"] = float(frame.t_capture)
    return obs


# --- the clock offset (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class ClockSample:
    t_sent: float  # local clock, request out
    t_remote: float  # the runtime's clock, as it answered
    t_received: float  # local clock, reply in

    @property
    def rtt_s(self) -> float:
        return self.t_received - self.t_sent


@dataclass(frozen=True)
class ClockOffset:
    offset_s: float  # runtime clock = local clock + offset_s
    rtt_s: float  # round trip of the sample used
    samples: int

    @property
    def error_bound_s(self) -> float:
        """The offset is off by at most half the round trip (asymmetric paths)."""
        return self.rtt_s / 2


def estimate_offset(samples: list[ClockSample]) -> ClockOffset:
    """NTP's rule: of several exchanges, trust the one with the shortest round trip (least
    queueing), and take the remote time to be read halfway through it."""
    good = [s for s in samples if s.rtt_s >= 0 and math.isfinite(s.t_remote)]
    if not good:
        raise ValueError("no usable clock sample")
    best = min(good, key=lambda s: s.rtt_s)
    return ClockOffset(best.t_remote - (best.t_sent + best.t_received) / 2, best.rtt_s, len(good))


# --- the client -------------------------------------------------------------------------------


@dataclass
class ClientStats:
    frames: int = 0  # valid frames returned
    rejected: int = 0  # undecodable or invalid camera messages
    last_rejection: str | None = None
    posted: int = 0
    unsent: int = 0  # messages dropped: the runtime's queue was full (or it is gone)
    rejections: dict[str, int] = field(default_factory=dict)  # invalid frames by reason


class SlowClient:
    """Sockets of one slow process. Every call returns promptly: frames are drained without
    blocking, posts never block (a full queue drops the message and counts it), queries time
    out. ``on_reject(reason)`` hears about every refused camera message."""

    def __init__(
        self,
        camera: str | None,
        obs: str,
        query: str | None = None,
        *,
        server_public_key: Path | None = None,
        client_secret: Path | None = None,
        max_side: int = 512,
        camera_clock: str = "runtime",
        clock: Callable[[], float] = time.monotonic,
        on_reject: Callable[[str], None] | None = None,
    ):
        import zmq

        if camera_clock not in ("runtime", "local"):
            raise ValueError(f"camera_clock must be 'runtime' or 'local', got {camera_clock!r}")
        for address in (camera, obs, query):
            if address and not link.is_loopback(address) and server_public_key is None:
                raise link.MessageError(
                    f"{address} is not loopback: a remote runtime needs CURVE keys "
                    "(server_public_key and client_secret; `kiwi keys` makes them)"
                )
        self.zmq, self.clock, self.max_side = zmq, clock, max_side
        self.camera_clock, self.on_reject = camera_clock, on_reject
        self.server_public_key, self.client_secret = server_public_key, client_secret
        self.ctx = link.Context()
        self.camera = None
        if camera:
            self.camera = self._connect(zmq.SUB, camera, hwm=2)
            self.camera.setsockopt(zmq.SUBSCRIBE, b"")
        self.obs = self._connect(zmq.PUSH, obs, hwm=4)
        self.query_address = query
        self.req: Any = None
        self.offset = ClockOffset(0.0, 0.0, 0)
        self.stats = ClientStats()
        self.counter: dict = {}
        self.seq = 0

    # --- time -------------------------------------------------------------------------------
    def runtime_now(self) -> float:
        return self.clock() + self.offset.offset_s

    def to_runtime(self, t_local: float) -> float:
        return t_local + self.offset.offset_s

    def clock_sample(self, timeout_s: float = 1.0) -> ClockSample:
        t_sent = self.clock()
        reply = self._ask(link.encode("clock"), timeout_s)
        t_received = self.clock()
        t = reply.header.meta.get("t")
        if reply.kind != "clock" or not isinstance(t, int | float) or isinstance(t, bool):
            raise link.MessageError(f"the runtime's clock reply is malformed: {reply.header}")
        return ClockSample(t_sent, float(t), t_received)

    def sync_clock(
        self, samples: int = 16, timeout_s: float = 1.0, spread_s: float = 0.02
    ) -> ClockOffset:
        """Measures and keeps the runtime's clock offset (min-RTT of ``samples`` exchanges).
        The runtime answers at its ticks, so a request waits up to a tick before it is read;
        the exchanges start at staggered moments over ``spread_s`` (one 50 Hz tick) so that
        some arrive just before a tick, and the shortest of them is the one trusted."""
        if samples < 1:
            raise ValueError("samples must be at least 1")
        got = []
        for i in range(samples):
            got.append(self.clock_sample(timeout_s))
            time.sleep(((i * GOLDEN) % 1.0) * spread_s)
        self.offset = estimate_offset(got)
        return self.offset

    # --- frames -----------------------------------------------------------------------------
    def frames(self) -> list[Frame]:
        """Every valid frame waiting now (no blocking), oldest first; invalid ones counted."""
        if self.camera is None:
            return []
        undecodable = self.counter.get("rejected", 0)
        messages = link.drain(self.camera, self.counter)
        for _ in range(self.counter.get("rejected", 0) - undecodable):
            self._reject("malformed", str(self.counter.get("last_error", "?")))
        out = []
        for msg in messages:
            if self.camera_clock == "local":
                t = self.to_runtime(msg.header.t_capture)
                msg = link.Message(msg.header.model_copy(update={"t_capture": t}), msg.arrays)
            try:
                out.append(parse_frame(msg, self.max_side, self.runtime_now()))
            except FrameError as e:
                self._reject("frame", str(e))
        return sorted(out, key=lambda f: (f.t_capture, f.seq))

    def newest_frame(self) -> Frame | None:
        """Keep-newest: the newest valid frame waiting, or None."""
        frames = self.frames()
        if frames:
            self.stats.frames += 1
        return frames[-1] if frames else None

    def wait_frame(self, timeout_s: float) -> Frame | None:
        """The newest valid frame, waiting up to ``timeout_s`` for one to arrive."""
        deadline = self.clock() + timeout_s
        while True:
            frame = self.newest_frame()
            remaining = deadline - self.clock()
            if frame is not None or remaining <= 0 or self.camera is None:
                return frame
            self.camera.poll(max(1, int(remaining * 1000)))

    def _reject(self, reason: str, message: str) -> None:
        self.stats.rejected += 1
        self.stats.rejections[reason] = self.stats.rejections.get(reason, 0) + 1
        self.stats.last_rejection = message
        if self.on_reject is not None:
            self.on_reject(message)

    # --- posting ----------------------------------------------------------------------------
    def post(
        self,
        t_capture: float,
        *,
        obs: dict[str, np.ndarray] | None = None,
        chunk: np.ndarray | None = None,
        dt: float = 0.02,
        t_first: float | None = None,
        meta: dict | None = None,
    ) -> bool:
        """One ``obs`` message: observation fields (the model's, e.g. ``state`` and
        ``object``) and/or an action chunk ``[T, 6]`` whose row 0 is for ``t_first`` (default:
        the capture time) and rows ``dt`` seconds apart. Times on the runtime's clock. ``meta``:
        extra header fields (JSON; the runtime ignores names it does not know). False when the
        runtime's queue was full or nothing was given."""
        arrays = dict(obs or {})
        meta = dict(meta or {})
        if chunk is not None:
            arrays["actions"] = np.asarray(chunk, np.float32)
            meta["t_first"] = float(t_capture if t_first is None else t_first)
            meta["dt"] = float(dt)
        if not arrays:
            return False
        return self._send(
            link.encode("obs", arrays, seq=self._next(), t_capture=t_capture, meta=meta)
        )

    def report(self, counts: dict[str, int], rejections: dict[str, int]) -> bool:
        """Tells the runtime this process's counters (shown in its status as ``slow_process``):
        ``counts`` such as calls and chunks, ``rejections`` by reason."""
        meta = {"counts": dict(counts), "rejections": dict(rejections)}
        return self._send(
            link.encode("slow_report", seq=self._next(), t_capture=self.runtime_now(), meta=meta)
        )

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _send(self, frames: list[bytes]) -> bool:
        try:  # never block on a runtime that is gone: a late message is worth nothing
            self.obs.send_multipart(frames, flags=self.zmq.NOBLOCK, copy=False)
        except self.zmq.Again:
            self.stats.unsent += 1
            return False
        self.stats.posted += 1
        return True

    # --- queries ----------------------------------------------------------------------------
    def status(self, timeout_s: float = 1.0) -> dict:
        """The runtime's status reply (loop, estimator, rejections by reason, watchdog, ...)."""
        reply = self._ask(link.encode("status"), timeout_s)
        if reply.kind != "status":
            raise link.MessageError(f"the runtime answered {reply.kind!r}: {reply.header.meta}")
        return dict(reply.header.meta)

    def _ask(self, frames: list[bytes], timeout_s: float) -> link.Message:
        zmq = self.zmq
        if self.query_address is None:
            raise link.MessageError("this client has no query address")
        if self.req is None:
            self.req = self._connect(zmq.REQ, self.query_address, hwm=4)
        req = self.req
        req.send_multipart(frames)
        if not req.poll(int(timeout_s * 1000)):
            req.close(0)  # a REQ socket without its reply cannot ask again: start anew
            self.req = None
            raise TimeoutError(
                f"the runtime at {self.query_address} did not answer in {timeout_s:g} s"
            )
        return link.decode(req.recv_multipart())

    def _connect(self, socket_type: int, address: str, hwm: int):
        return self.ctx.connect(
            socket_type,
            address,
            server_public_key=self.server_public_key,
            client_secret=self.client_secret,
            hwm=hwm,
        )

    def close(self) -> None:
        self.ctx.close()
