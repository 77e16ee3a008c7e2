"""The slow process: perception (and, in VLA mode, action chunks), late and at a low rate.

It reads the camera stream (frames with the joint state at capture; in sim, from the simulated
world's camera socket: never the simulator itself), finds the cube in the newest frame, waits
out the configured processing latency, and posts an observation stamped with its capture time
to the runtime's observation socket. In VLA mode it also attaches an action chunk; in sim the
"VLA" is the scripted grasp replanned from each observation (a stand-in, named so).

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


@dataclass
class SlowStats:
    frames: int = 0
    posted: int = 0
    misses: int = 0  # frames where the cube was not found
    rejected: int = 0


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

    def step(self) -> bool:
        """One perception cycle on the newest frame; returns True if an observation went out."""
        frame = link.newest(link.drain(self.camera, self.counter))
        self.stats.rejected = self.counter.get("rejected", 0)
        if frame is None or "wrist" not in frame.arrays:
            return False
        self.stats.frames += 1
        state = np.array(frame.arrays["state"], np.float32)
        obj = self.perception(frame.arrays["wrist"], state)
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
        self.obs.send_multipart(
            link.encode("obs", arrays, seq=self.seq, t_capture=t_capture, meta=meta), copy=False
        )
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
