"""The simulated world as its own process: the arm, the cube and the cameras, in real time.

Each 20 ms it applies the newest joint targets from the command socket, steps MuJoCo, publishes
the joint state (``sim_state``; ground truth rides along in a separate ``truth`` message for
displays and evaluations, never for the estimator), and every ``1/camera_hz`` publishes a wrist
frame with the joints at capture (``camera``) for the slow process. A ``reset`` message on the
command socket starts a new episode with the seed it carries.

Run: ``python -m robot_runtime.sim_world --config configs/sim_grasp.yaml``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import link
from .config import GraspJob, load_config
from .loop import FastLoop, StopOnSignals

CONTROL_HZ = 50.0


class SimWorld:
    def __init__(self, job: GraspJob, clock=time.monotonic):
        import zmq

        from sim.kiwi_grasp import KiwiGraspEnv

        self.job, self.clock = job, clock
        self.env = KiwiGraspEnv()
        self.ctx = link.Context()
        self.camera = self.ctx.bind(zmq.PUB, job.link.camera, hwm=2)
        self.state_pub = self.ctx.bind(zmq.PUB, job.link.sim_state, hwm=8)
        self.commands = self.ctx.bind(zmq.PULL, job.link.command, hwm=16)
        self.rejected: dict = {}
        self.seq = 0
        self.episode = -1
        self.targets: np.ndarray | None = None
        self.camera_every = max(1, int(round(CONTROL_HZ / job.slow.camera_hz)))
        self.size = job.slow.image_size
        self.info: dict = {}

    def reset(self, seed: int) -> None:
        _, self.info = self.env.reset(seed=seed)
        self.targets = self.env.joint_state().astype(np.float64)
        self.episode += 1

    def tick(self, k: int, t: float) -> None:
        for msg in link.drain(self.commands, self.rejected):
            if msg.kind == "reset":
                self.reset(int(msg.header.meta.get("seed", 0)))
            elif msg.kind == "targets" and "targets" in msg.arrays:
                targets = np.asarray(msg.arrays["targets"], float)
                if targets.shape == (6,) and np.all(np.isfinite(targets)):
                    self.targets = targets
        if self.targets is None:
            return  # no episode yet
        _, _, _, _, self.info = self.env.step(self.targets.astype(np.float32))
        now = self.clock()
        joints = self.env.joint_state()
        self.seq += 1
        self._send(self.state_pub, "sim_state", {"state": joints}, now)
        truth = {
            "object_true": self.env.true_object().astype(np.float32),
            "cube_pos": np.asarray(self.info["cube_pos"], np.float32),
            "finger_contacts": np.asarray(self.info["finger_contacts"]),
        }
        self._send(
            self.state_pub,
            "truth",
            truth,
            now,
            {
                "is_success": bool(self.info["is_success"]),
                "episode": self.episode,
                "lifted_m": float(self.info["lifted_m"]),
            },
        )
        if k % self.camera_every == 0:
            frame = self.env.render_camera("wrist", self.size, self.size)
            self._send(self.camera, "camera", {"wrist": frame, "state": joints}, now)

    def _send(self, sock, kind: str, arrays: dict, t: float, meta: dict | None = None) -> None:
        import zmq

        try:
            sock.send_multipart(
                link.encode(kind, arrays, seq=self.seq, t_capture=t, meta=meta),
                flags=zmq.NOBLOCK,
                copy=False,
            )
        except zmq.Again:
            pass  # nobody listening yet / slow reader: drop, like a camera would

    def run(self, duration_s: float | None = None) -> None:
        loop = FastLoop(CONTROL_HZ, self.tick, self.clock)
        with StopOnSignals(loop):
            loop.run(duration_s=duration_s)

    def close(self) -> None:
        for sock in (self.camera, self.state_pub, self.commands):
            sock.close(0)
        self.env.close()
        self.ctx.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the simulated world of `kiwi sim`")
    parser.add_argument("--config", default="sim_grasp")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--duration", type=float)
    args = parser.parse_args(argv)
    job, _ = load_config(args.config, GraspJob, args.overrides)
    world = SimWorld(job)
    print("sim world ready", flush=True)
    try:
        world.run(args.duration)
    finally:
        world.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
