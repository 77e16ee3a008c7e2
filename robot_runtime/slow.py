"""The slow process: perception and, with a policy, action chunks, late and at a low rate.

It reads the camera stream through the slow-process client (client.py: frames with the joint
state at capture; in sim, from the simulated world's camera socket, never the simulator
itself), finds the cube in the newest frame, calls the policy (policy_runner.py: any
``policy(observation) -> chunk``, with a timeout, its answer checked), waits out the configured
processing latency, and posts an observation stamped with its capture time, with the chunk
when there is one, to the runtime's observation socket. In sim the default "VLA" (``--vla``) is
``ScriptedVLA``: the scripted grasp replanned from each detection (a stand-in, named so).

Every camera message is validated before perception sees it (``client.parse_frame``): kind
``camera``, a ``wrist`` frame (and any other cameras) of uint8 HxWx3 no larger than
``slow.image_size`` on a side, a finite float joint state of one value per joint, and a capture
time not in the future. Anything else is a counted rejection with its reason (``SlowStats``,
logged); the newest *valid* frame is used. A policy's refusals (raised, timed out, NaN, wrong
shape) are counted by reason, logged, and reported to the runtime (``slow_report``: its status
shows them under ``slow_process``); nothing of them is sent as a chunk.

Run: ``kiwi slow --config configs/sim_grasp.yaml [--vla | --policy MODULE:FACTORY]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.perception import PerceptionNoise

from . import link
from .client import FrameError, SlowClient, policy_observation
from .client import parse_frame as parse_camera_frame
from .config import GraspJob
from .perception import CubePerception
from .policy_runner import PolicyRunner

CHUNK_STEPS = 25  # 0.5 s of actions at 50 Hz
CONTROL_DT = 0.02
N_JOINTS = 6  # the five arm joints (degrees) and the gripper (0..100)
LOG_FIRST_REJECTIONS = 10  # then every 100th
DEFAULT_TASK = "grasp the cube"
RESYNC_S = 30.0  # a remote runtime's clock offset is measured again this often
REPORT_EVERY_S = 1.0  # the policy's counters go to the runtime at least this often

__all__ = ["FrameError", "ScriptedVLA", "SlowProcess", "SlowStats", "parse_frame"]


def parse_frame(msg: link.Message, max_side: int, now: float) -> tuple[np.ndarray, np.ndarray]:
    """The wrist image [H, W, 3] uint8 and the joint state [6] float32 of a camera message;
    FrameError saying what is wrong otherwise (``client.parse_frame`` gives every camera)."""
    frame = parse_camera_frame(msg, max_side, now)
    return frame.images["wrist"], frame.state


@dataclass
class SlowStats:
    frames: int = 0
    posted: int = 0
    misses: int = 0  # frames where the cube was not found
    rejected: int = 0  # undecodable or invalid camera messages
    last_rejection: str | None = None
    unsent: int = 0  # messages dropped because the runtime's queue was full (or gone)
    chunks: int = 0  # chunks posted
    policy_rejections: dict[str, int] = field(default_factory=dict)  # by reason


class ScriptedVLA:
    """Stand-in for a VLA in sim: the scripted grasp, aimed at the first detection, emitting the
    next ``steps`` actions of its plan from the capture time on. A policy like any other; its
    detections come from ``detect(image, state)`` (the slow process's perception)."""

    dt = CONTROL_DT

    def __init__(self, detect: Callable | None = None, steps: int = CHUNK_STEPS):
        from sim.scripted import ScriptedGrasp

        self.policy = ScriptedGrasp()
        self.detect = detect
        self.steps = steps
        self.t_start: float | None = None

    def __call__(self, observation: dict) -> np.ndarray | None:
        if self.detect is None:
            raise ValueError("ScriptedVLA needs a detector (the slow process's perception)")
        state = observation["observation.state"]
        obj = self.detect(observation["observation.images.wrist"], state)
        if obj is None:
            return None
        return self.chunk({"state": state, "object": obj}, observation["timestamp"])

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
    """``policy``: any ``policy(observation) -> chunk`` (``vla=True`` without one: the
    ScriptedVLA). ``server_key``/``client_key``: CURVE files for a runtime on another machine
    (its clock offset is then measured and applied)."""

    def __init__(
        self,
        job: GraspJob,
        vla: bool = False,
        clock=time.monotonic,
        sleep=time.sleep,
        *,
        policy: Callable | None = None,
        policy_timeout_s: float = 2.0,
        task: str = DEFAULT_TASK,
        server_key: Path | None = None,
        client_key: Path | None = None,
        camera_clock: str = "runtime",
    ):
        s = job.slow
        self.job, self.clock, self.sleep, self.task = job, clock, sleep, task
        self.period, self.latency_s = 1.0 / s.rate_hz, s.latency_ms / 1000.0
        self.perception = CubePerception(
            PerceptionNoise(s.noise_far_m, s.noise_near_m, s.noise_far_deg, s.noise_near_deg),
            s.seed,
        )
        self.client = SlowClient(
            job.link.camera,
            job.link.obs,
            job.link.query,
            server_public_key=server_key,
            client_secret=client_key,
            max_side=s.image_size,
            camera_clock=camera_clock,
            clock=clock,
            on_reject=self._log_frame_rejection,
        )
        self.remote = not all(
            link.is_loopback(a) for a in (job.link.camera, job.link.obs, job.link.query)
        )
        self._t_synced: float | None = None
        if policy is None and vla:
            policy = ScriptedVLA(self.detect)
        self.runner = (
            PolicyRunner(
                policy,
                policy_timeout_s,
                job.runtime.limits.max_chunk_rows,
                on_reject=self._log_policy_rejection,
            )
            if policy is not None
            else None
        )
        self.vla = policy
        self.stats = SlowStats()
        self._detection: tuple[np.ndarray, np.ndarray | None] | None = None
        self._reported: dict[str, int] = {}
        self._t_reported = -float("inf")

    # --- perception -------------------------------------------------------------------------
    def detect(self, image: np.ndarray, state: np.ndarray) -> np.ndarray | None:
        """The cube in ``image``, perceived once per frame (the policy asks for the same)."""
        if self._detection is not None and self._detection[0] is image:
            return self._detection[1]
        obj = self.perception(image, state)
        self._detection = (image, obj)  # the image itself, not its id: ids are reused
        return obj

    # --- logging ----------------------------------------------------------------------------
    def _log_frame_rejection(self, reason: str) -> None:
        self.stats.rejected = self.client.stats.rejected
        self.stats.last_rejection = reason
        n = self.stats.rejected
        if n <= LOG_FIRST_REJECTIONS or n % 100 == 0:
            print(f"rejected camera message ({n} so far): {reason}", flush=True)

    def _log_policy_rejection(self, reason: str, message: str) -> None:
        r = self.stats.policy_rejections
        r[reason] = r.get(reason, 0) + 1
        n = sum(r.values())
        if n <= LOG_FIRST_REJECTIONS or n % 100 == 0:
            print(f"refused the policy's answer ({n} so far, {reason}): {message}", flush=True)

    # --- one cycle --------------------------------------------------------------------------
    def sync_clock(self) -> None:
        """A remote runtime's clock offset, measured now (loopback: the clock is shared)."""
        if not self.remote:
            return
        offset = self.client.sync_clock()
        self._t_synced = self.clock()
        print(
            f"runtime clock offset {offset.offset_s:+.6f} s "
            f"(round trip {offset.rtt_s * 1e3:.2f} ms, +-{offset.error_bound_s * 1e3:.2f} ms)",
            flush=True,
        )

    def step(self) -> bool:
        """One cycle on the newest frame; returns True if a message went out."""
        frame = self.client.newest_frame()
        if frame is None:
            return False
        self.stats.frames += 1
        image, state = frame.images["wrist"], frame.state
        obj = self.detect(image, state)
        if obj is None:
            self.stats.misses += 1
        chunk = None
        if self.runner is not None:
            chunk = self.runner(policy_observation(frame, self.task))
            self.report()
        if obj is None and chunk is None:
            return False
        wait = frame.t_capture + self.latency_s - self.client.runtime_now()
        if wait > 0:
            self.sleep(wait)  # the processing time a real perception/VLA model takes
        obs = None if obj is None else {"state": state, "object": obj}
        dt = self.runner.dt if self.runner is not None else CONTROL_DT
        sent = self.client.post(frame.t_capture, obs=obs, chunk=chunk, dt=dt)
        self.stats.unsent = self.client.stats.unsent
        if sent:
            self.stats.posted += 1
            self.stats.chunks += chunk is not None
        return sent

    def report(self) -> None:
        """Tells the runtime the policy's counters: at once when its refusals changed, else
        once every ``REPORT_EVERY_S``."""
        assert self.runner is not None
        now = self.clock()
        if self.runner.rejections != self._reported or now - self._t_reported >= REPORT_EVERY_S:
            if self.client.report(self.runner.counts(), self.runner.rejections):
                self._reported = dict(self.runner.rejections)
                self._t_reported = now

    def wait_for_clock(self, stop=None) -> None:
        """A remote runtime's clock offset before anything is posted (times on the wire are
        its clock): asks until it answers, saying so once."""
        said = False
        while self.remote and (stop is None or not stop.is_set()):
            try:
                self.sync_clock()
                return
            except TimeoutError as e:
                if not said:
                    print(f"waiting for the runtime's clock: {e}; asking again", flush=True)
                    said = True

    def run(self, duration_s: float | None = None, stop=None) -> SlowStats:
        self.wait_for_clock(stop)
        start = self.clock()
        next_t = start
        while stop is None or not stop.is_set():
            now = self.clock()
            if duration_s is not None and now - start >= duration_s:
                break
            if self._t_synced is not None and now - self._t_synced >= RESYNC_S:
                try:
                    self.sync_clock()
                except TimeoutError as e:
                    print(f"clock offset not refreshed: {e}", flush=True)
            self.step()
            next_t += self.period
            delay = next_t - self.clock()
            if delay > 0:
                self.sleep(delay)
            else:
                next_t = self.clock()  # fell behind: no catch-up burst
        return self.stats

    def close(self) -> None:
        self.client.close()
