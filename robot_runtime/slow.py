"""The slow process: perception (and, in VLA mode, action chunks), late and at a low rate.

It reads the camera stream (frames with the joint state at capture; in sim, from the simulated
world's camera socket: never the simulator itself), finds the cube in the newest frame, waits
out the configured processing latency, and posts an observation stamped with its capture time
to the runtime's observation socket. In VLA mode it also attaches an action chunk; in sim the
"VLA" is the scripted grasp replanned from each observation (a stand-in, named so).

Every camera message is validated before perception sees it (``parse_frame``): kind ``camera``,
a ``wrist`` frame of uint8 HxWx3 no larger than ``slow.image_size`` on a side, a finite float
joint state of one value per joint, and a capture time not in the future. Anything else is a
counted rejection with its reason (``SlowStats``, logged); the newest *valid* frame is used.

Run: ``kiwi slow --config configs/sim_grasp.yaml [--vla]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sim.perception import PerceptionNoise

from . import link
from .config import GraspJob
from .perception import CubePerception

CHUNK_STEPS = 25  # 0.5 s of actions at 50 Hz
CONTROL_DT = 0.02
N_JOINTS = 6  # the five arm joints (degrees) and the gripper (0..100)
MAX_FUTURE_S = 1.0  # a frame stamped later than this ahead of our clock would stall the wait
LOG_FIRST_REJECTIONS = 10  # then every 100th


class FrameError(ValueError):
    """A camera message the slow process refuses; counted and logged, never raised."""


def parse_frame(msg: link.Message, max_side: int, now: float) -> tuple[np.ndarray, np.ndarray]:
    """The wrist image [H, W, 3] uint8 and the joint state [6] float32 of a camera message;
    FrameError saying what is wrong otherwise. ``now`` is the capture clock's current time."""
    if msg.kind != "camera":
        raise FrameError(f"unexpected message kind {msg.kind!r}")
    image, state = msg.arrays.get("wrist"), msg.arrays.get("state")
    if image is None or state is None:
        raise FrameError("camera message without 'wrist' and 'state' arrays")
    if image.dtype != np.uint8:
        raise FrameError(f"wrist: dtype {image.dtype} is not uint8")
    if image.ndim != 3 or image.shape[2] != 3:
        raise FrameError(f"wrist: shape {image.shape} is not (H, W, 3)")
    if not (1 <= image.shape[0] <= max_side and 1 <= image.shape[1] <= max_side):
        raise FrameError(f"wrist: {image.shape[0]}x{image.shape[1]} is outside 1..{max_side}")
    if state.dtype.kind != "f" or state.shape != (N_JOINTS,):
        raise FrameError(f"state: {state.dtype} {state.shape} is not a float ({N_JOINTS},)")
    if not np.all(np.isfinite(state)):
        raise FrameError("state: not all finite")
    if msg.header.t_capture > now + MAX_FUTURE_S:
        raise FrameError(
            f"captured {msg.header.t_capture - now:.3g} s in the future (clock not shared?)"
        )
    return image, state.astype(np.float32)


@dataclass
class SlowStats:
    frames: int = 0
    posted: int = 0
    misses: int = 0  # frames where the cube was not found
    rejected: int = 0  # undecodable or invalid camera messages
    last_rejection: str | None = None
    unsent: int = 0  # observations dropped because the runtime's queue was full (or gone)


class ScriptedVLA:
    """Stand-in for a VLA in sim: the scripted grasp, aimed at the first detection, emitting the
    next ``steps`` actions of its plan from the capture time on."""

    def __init__(self, steps: int = CHUNK_STEPS):
        from sim.scripted import ScriptedGrasp

        self.policy = ScriptedGrasp()
        self.steps = steps
        self.t_start: float | None = None

    def chunk(self, obs: dict[str, np.ndarray], t_capture: float) -> np.ndarray:
        if self.t_start is None:
            self.t_start = t_capture
        p = self.policy
        actions = []
        for i in range(self.steps):
            p.t = max(0.0, t_capture - self.t_start + i * CONTROL_DT)
            actions.append(p.act(obs))
        return np.stack(actions).astype(np.float32)


class SlowProcess:
    def __init__(self, job: GraspJob, vla: bool = False, clock=time.monotonic, sleep=time.sleep):
        import zmq

        s = job.slow
        self.job, self.clock, self.sleep = job, clock, sleep
        self.period, self.latency_s = 1.0 / s.rate_hz, s.latency_ms / 1000.0
        self.perception = CubePerception(
            PerceptionNoise(s.noise_far_m, s.noise_near_m, s.noise_far_deg, s.noise_near_deg),
            s.seed,
        )
        self.vla = ScriptedVLA() if vla else None
        self.ctx = link.Context()
        self.camera = self.ctx.connect(zmq.SUB, job.link.camera, hwm=2)
        self.camera.setsockopt(zmq.SUBSCRIBE, b"")
        self.obs = self.ctx.connect(zmq.PUSH, job.link.obs, hwm=4)
        self.stats = SlowStats()
        self.counter: dict = {}
        self.seq = 0
        self.episode = None

    def newest_frame(self) -> tuple[link.Message, np.ndarray, np.ndarray] | None:
        """The newest valid camera message waiting, with its image and joint state; the
        others are counted and logged."""
        undecodable = self.counter.get("rejected", 0)
        messages = link.drain(self.camera, self.counter)
        undecodable = self.counter.get("rejected", 0) - undecodable
        if undecodable:
            self._reject(self.counter.get("last_error", "?"), undecodable)
        now = self.clock()
        valid = []
        for msg in messages:
            try:
                valid.append((msg, *parse_frame(msg, self.job.slow.image_size, now)))
            except FrameError as e:
                self._reject(str(e))
        newest = link.newest([m for m, _, _ in valid])
        return next((v for v in valid if v[0] is newest), None)

    def _reject(self, reason: str, n: int = 1) -> None:
        self.stats.rejected += n
        self.stats.last_rejection = reason
        if self.stats.rejected <= LOG_FIRST_REJECTIONS or self.stats.rejected % 100 < n:
            print(f"rejected camera message ({self.stats.rejected} so far): {reason}", flush=True)

    def step(self) -> bool:
        """One perception cycle on the newest frame; returns True if an observation went out."""
        import zmq

        newest = self.newest_frame()
        if newest is None:
            return False
        frame, image, state = newest
        self.stats.frames += 1
        obj = self.perception(image, state)
        if obj is None:
            self.stats.misses += 1
            return False
        t_capture = frame.header.t_capture
        arrays = {"state": state, "object": obj}
        meta = {}
        if self.vla is not None:
            arrays["actions"] = self.vla.chunk({"state": state, "object": obj}, t_capture)
            meta = {"t_first": t_capture, "dt": CONTROL_DT}
        wait = t_capture + self.latency_s - self.clock()
        if wait > 0:
            self.sleep(wait)  # the processing time a real perception/VLA model takes
        self.seq += 1
        try:  # never block on a runtime that is gone: a late observation is worth nothing
            self.obs.send_multipart(
                link.encode("obs", arrays, seq=self.seq, t_capture=t_capture, meta=meta),
                flags=zmq.NOBLOCK,
                copy=False,
            )
        except zmq.Again:
            self.stats.unsent += 1
            return False
        self.stats.posted += 1
        return True

    def run(self, duration_s: float | None = None, stop=None) -> SlowStats:
        start = self.clock()
        next_t = start
        while stop is None or not stop.is_set():
            if duration_s is not None and self.clock() - start >= duration_s:
                break
            self.step()
            next_t += self.period
            delay = next_t - self.clock()
            if delay > 0:
                self.sleep(delay)
            else:
                next_t = self.clock()  # fell behind: no catch-up burst
        return self.stats

    def close(self) -> None:
        self.camera.close(0)
        self.obs.close(0)
        self.ctx.close()
