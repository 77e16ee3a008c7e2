"""The simulated world as its own process: the arm, the cube and the cameras, in real time.

Each 20 ms it applies the newest joint targets from the command socket, steps MuJoCo, publishes
the joint state (``sim_state``; ground truth rides along in a separate ``truth`` message for
displays and evaluations, never for the estimator: the cube in the wrist-camera frame, the
joints it was seen from, its world position, finger contacts, success and lift), and every
``1/camera_hz`` publishes a wrist frame with the joints at capture (``camera``) for the slow
process. A ``reset`` message on the
command socket starts a new episode with the seed it carries.

Every command is validated before it touches the simulator (``parse_command``): a reset's seed
is an int in 0..2**31-1 (not a bool), targets are a finite float array of one value per joint.
Anything else, like a message that does not decode, is a counted rejection with its reason,
logged and published in the ``truth`` message's meta (``rejected``, ``last_rejection``); the
world goes on.

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
N_JOINTS = 6  # the five arm joints (degrees) and the gripper (0..100)
MAX_SEED = 2**31 - 1
LOG_FIRST_REJECTIONS = 10  # then every 100th: a flood of bad commands must not flood the log


class CommandError(ValueError):
    """A command the world refuses; counted and logged, never raised out of a tick."""


def parse_seed(meta: dict) -> int:
    seed = meta.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CommandError(f"reset: seed {seed!r} is not an integer")
    if not 0 <= seed <= MAX_SEED:
        raise CommandError(f"reset: seed {seed} is outside 0..{MAX_SEED}")
    return seed


def parse_targets(arrays: dict[str, np.ndarray]) -> np.ndarray:
    if "targets" not in arrays:
        raise CommandError("targets: no 'targets' array")
    targets = arrays["targets"]
    if targets.dtype.kind != "f":
        raise CommandError(f"targets: dtype {targets.dtype} is not a float type")
    if targets.shape != (N_JOINTS,):
        raise CommandError(f"targets: shape {targets.shape} is not ({N_JOINTS},)")
    if not np.all(np.isfinite(targets)):
        raise CommandError("targets: not all finite")
    return targets.astype(np.float64)


def parse_command(msg: link.Message) -> tuple[str, int | np.ndarray]:
    """``("reset", seed)`` or ``("targets", joint targets [6])``; CommandError otherwise."""
    if msg.kind == "reset":
        return "reset", parse_seed(msg.header.meta)
    if msg.kind == "targets":
        return "targets", parse_targets(msg.arrays)
    raise CommandError(f"unknown command kind {msg.kind!r}")


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
        self.counter: dict = {}  # rejected commands ("rejected") and the last reason
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

    @property
    def rejected(self) -> int:
        return self.counter.get("rejected", 0)

    def handle_commands(self) -> None:
        """Applies every waiting command that validates; counts and logs the others."""
        before = self.rejected
        messages = link.drain(self.commands, self.counter)
        if self.rejected > before:  # undecodable: drain counted them
            self._log_rejection(self.counter.get("last_error", "?"))
        for msg in messages:
            try:
                kind, value = parse_command(msg)
            except CommandError as e:
                self.counter["rejected"] = self.rejected + 1
                self.counter["last_error"] = str(e)
                self._log_rejection(str(e))
                continue
            if kind == "reset":
                self.reset(value)
            else:
                self.targets = value

    def _log_rejection(self, reason: str) -> None:
        n = self.rejected
        if n <= LOG_FIRST_REJECTIONS or n % 100 == 0:
            print(f"rejected command ({n} so far): {reason}", flush=True)

    def tick(self, k: int, t: float) -> None:
        self.handle_commands()
        if self.targets is None:
            return  # no episode yet
        _, _, _, _, self.info = self.env.step(self.targets.astype(np.float32))
        now = self.clock()
        joints = self.env.joint_state()
        self.seq += 1
        self._send(self.state_pub, "sim_state", {"state": joints}, now)
        truth = {
            "object_true": self.env.true_object().astype(np.float32),
            "state": joints,  # the joints object_true was seen from (world-frame displays)
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
                "rejected": self.rejected,
                "last_rejection": self.counter.get("last_error"),
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
