"""The runtime process of `kiwi sim`: grasp attempts on the simulated world's arm, over ZeroMQ.

Run: ``python -m robot_runtime.runtime_process --config configs/sim_grasp.yaml`` (what
`kiwi sim` starts). On a real arm the same runtime runs through ``kiwi run`` (service.serve).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from drivers.arm import LEROBOT_JOINTS
from drivers.errors import BusError

from . import link
from .config import GraspJob
from .policies import build_policy
from .service import Runtime, load_world_model, tune_allocator


class RemoteSimArm:
    """The simulated world's arm over ZeroMQ (same interface as drivers.arm.Arm): targets go
    out on the command socket, joints come back on the state socket."""

    joint_names = LEROBOT_JOINTS

    def __init__(self, ctx: link.Context, job: GraspJob):
        import zmq

        from sim.kinematics import JOINT_LIMITS_DEG

        self.commands = ctx.connect(zmq.PUSH, job.link.command, hwm=16)
        self.state = ctx.connect(zmq.SUB, job.link.sim_state, hwm=64)
        self.state.setsockopt(zmq.SUBSCRIBE, b"")
        self._limits = JOINT_LIMITS_DEG.astype(float)
        self.joints: np.ndarray | None = None
        self.truth: link.Message | None = None
        self.counter: dict = {}

    @property
    def limits(self) -> np.ndarray:
        return self._limits

    def connect(self) -> None:
        pass

    def reset(self, seed: int, timeout_s: float = 5.0) -> np.ndarray:
        """Starts an episode in the simulated world; returns its first joint state."""
        self.joints, deadline = None, time.monotonic() + timeout_s
        self.commands.send_multipart(link.encode("reset", meta={"seed": seed}))
        while time.monotonic() < deadline:
            self._drain()
            if self.joints is not None:
                return self.joints
            time.sleep(0.005)
        raise TimeoutError("the simulated world did not answer a reset (is it running?)")

    def _drain(self) -> None:
        for msg in link.drain(self.state, self.counter, max_messages=256):
            if msg.kind == "sim_state":
                self.joints = np.asarray(msg.arrays["state"], float)
            elif msg.kind == "truth":
                self.truth = msg

    def read_joints(self) -> np.ndarray:
        self._drain()
        if self.joints is None:
            raise BusError("no joint state from the simulated world yet")
        return self.joints.copy()

    def write_targets(self, targets: np.ndarray) -> None:
        """Sends without blocking; a world that has stopped reading (gone) is a failed bus
        cycle for the runtime to count, like a servo that does not answer."""
        import zmq

        try:
            self.commands.send_multipart(
                link.encode("targets", {"targets": np.asarray(targets, np.float64)}),
                flags=zmq.NOBLOCK,
            )
        except zmq.Again:
            raise BusError("the simulated world takes no commands (gone?)") from None

    def disconnect(self, torque_off: bool = True) -> None:
        self.commands.close(0)
        self.state.close(0)


def main(argv: list[str] | None = None) -> int:
    """The runtime process of `kiwi sim`: grasp attempts on the simulated world's arm."""
    import argparse
    import signal

    from .config import load_config

    parser = argparse.ArgumentParser(description="the runtime process of `kiwi sim`")
    parser.add_argument("--config", default="sim_grasp")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--record", help="LeRobot dataset folder: each attempt an episode")
    parser.add_argument(
        "--controller",
        choices=["grasp", "chunk"],
        default="grasp",
        help="grasp: the gated grasp state machine; chunk: follow the slow process's chunks",
    )
    args = parser.parse_args(argv)
    job, _ = load_config(args.config, GraspJob, args.overrides)
    torch.set_num_threads(job.runtime.threads)
    wm = load_world_model(job.runtime.checkpoint)
    built = build_policy(job, args.controller)
    if built.note:
        print(built.note, flush=True)
    policy = built.policy
    tune_allocator()
    ctx = link.Context()
    arm = RemoteSimArm(ctx, job)
    runtime = Runtime(job, wm, arm, ctx=ctx, policy=policy)
    recorder = None
    if args.record:
        from .attempt_recording import AttemptRecorder

        size = job.slow.image_size
        recorder = runtime.recorder = AttemptRecorder(
            args.record,
            int(round(job.runtime.rate_hz)),
            len(arm.joint_names),
            cameras={"wrist": (size, size)},
            camera_address=job.link.camera,
            ctx=ctx,
            seed=True,
        )
    stopping: dict[str, str | None] = {"reason": None}

    def on_signal(signum, frame):
        stopping["reason"] = signal.Signals(signum).name
        if runtime.loop is not None:
            runtime.loop.stop(stopping["reason"])

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("runtime ready", flush=True)
    time.sleep(0.3)  # let subscribers connect before the first events
    code = 0
    try:
        for i in range(job.sim.attempts):
            if stopping["reason"] or runtime.stop_reason:
                break
            runtime.run_attempt(
                job.sim.seed + i, job.sim.episode_s, lambda: stopping["reason"] is not None
            )
            if recorder is not None and not (stopping["reason"] or runtime.stop_reason):
                # the outcome by the simulated world's truth, as `kiwi sim` scores it
                truth = arm.truth.header.meta if arm.truth is not None else {}
                recorder.end(bool(truth.get("is_success")), runtime.policy.events)
    except TimeoutError as e:  # the world is gone: nothing to hold
        stopping["reason"] = str(e)
        print(f"runtime: {e}", flush=True)
        code = 1
    finally:
        runtime.hold_on_stop()
        reason = stopping["reason"] or runtime.stop_reason or "finished"
        runtime.publish("event", {}, {"event": "done", "reason": reason})
        time.sleep(0.1)
        arm.disconnect()
        if recorder is not None:  # the episodes already queued are written first
            record = recorder.close()
            print(
                f"recorded {record['episodes_written']} episode(s) into {record['dir']}"
                + (f"; skipped: {'; '.join(record['skipped'])}" if record["skipped"] else "")
                + (f"; error: {record['error']}" if record["error"] else ""),
                flush=True,
            )
        runtime.close()
    return 1 if runtime.stop_reason else code


if __name__ == "__main__":
    import sys

    sys.exit(main())
