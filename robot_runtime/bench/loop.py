"""`kiwi bench loop`: the runtime's real tick at 100 Hz and 200 Hz while a slow process posts
observations.

Each tick is ``service.Runtime.tick``, the one the service runs: drain and check the observation
socket, apply the newest observation (posterior at its capture tick and replay, in the
background when it is long), answer queries, then the control step (read the arm, the grasp
policy on the shipped grasp model's decoded estimate, the watchdog, safety, write, the prior
step) and telemetry. The arm is a fake that reaches its targets at once (named as such: the
bus's own cost is `kiwi bench bus`). The slow process is its own process, posting observations
(joints, the cube in the camera frame, and a 64x64x3 image the runtime decodes and ignores) at
5 Hz, captured 150 ms before they are sent. Jitter is how late a tick started; an overrun is a
tick that ended after the next one was due.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from drivers.arm import LEROBOT_JOINTS

from .. import link
from ..loop import FastLoop
from ..textui import format_table
from .common import machine, verdict, write_json
from .link import load_note

RATES_HZ = (100, 200)
SLOW_RATE_HZ = 5.0
LATENCY_S = 0.15
TARGETS = {"jitter_us_p99": 1000.0, "overruns": 0}


class EchoArmFake:
    """A fake arm (named as such): it is where it was last told to be, at once."""

    joint_names = LEROBOT_JOINTS

    def __init__(self):
        from sim.kinematics import JOINT_LIMITS_DEG

        self.limits = JOINT_LIMITS_DEG.astype(float)
        self.joints = np.array([0.0, -70.0, 30.0, 90.0, 0.0, 100.0])

    def read_joints(self) -> np.ndarray:
        return self.joints.copy()

    def write_targets(self, targets: np.ndarray) -> None:
        self.joints = np.asarray(targets, float).copy()


def post_observations(address: str, rate_hz: float) -> None:
    """The slow process's stand-in (run as its own process): observations until killed."""
    import zmq

    ctx = link.Context()
    push = ctx.connect(zmq.PUSH, address, hwm=16)
    rng = np.random.default_rng(0)
    k = 0
    try:
        while True:
            cube = np.array([0.0, 0.02, 0.22, 10.0]) + rng.normal(0, [0.003, 0.003, 0.003, 3])
            arrays = {
                "state": np.array([0.0, -70.0, 30.0, 90.0, 0.0, 100.0], np.float32),
                "object": cube.astype(np.float32),
                "image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            }
            msg = link.encode("obs", arrays, seq=k, t_capture=time.monotonic() - LATENCY_S)
            push.send_multipart(msg, flags=zmq.NOBLOCK)
            k += 1
            time.sleep(1.0 / rate_hz)
    except (KeyboardInterrupt, zmq.Again):
        pass
    finally:
        ctx.close()


def make_runtime(rate_hz: int):
    import torch

    from ..config import GraspJob, load_config
    from ..dryrun import free_ports
    from ..policies import build_policy
    from ..service import Runtime, load_world_model

    obs, query, tele = free_ports(3)
    job, _ = load_config(
        "sim_grasp",
        GraspJob,
        [
            f"runtime.rate_hz={rate_hz}",
            f"link.obs=tcp://127.0.0.1:{obs}",
            f"link.query=tcp://127.0.0.1:{query}",
            f"link.telemetry=tcp://127.0.0.1:{tele}",
        ],
    )
    torch.set_num_threads(job.runtime.threads)
    wm = load_world_model(job.runtime.checkpoint)
    policy = build_policy(job, "grasp").policy
    arm = EchoArmFake()
    runtime = Runtime(job, wm, arm, policy=policy)
    runtime.start_attempt(0, arm.read_joints())
    return runtime, job


def measure_rate(rate_hz: int, seconds: float) -> dict:
    runtime, job = make_runtime(rate_hz)
    cmd = [sys.executable, "-m", "robot_runtime.bench.loop", job.link.obs, str(SLOW_RATE_HZ)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        if not runtime.obs_sock.poll(20_000):
            raise ChildProcessError("no observation arrived from the slow process")
        loop = runtime.loop = FastLoop(rate_hz, runtime.tick, runtime.clock)
        summary = loop.run(duration_s=seconds).summary()
        return {
            **summary,
            "observations": runtime.estimator.stats.applied,
            "background_replays": runtime.estimator.stats.background,
            "rejected": runtime.rejected_total(),
            "phase": runtime.policy.phase,
            "seconds": seconds,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        runtime.close()


def measure(rates_hz: tuple[int, ...], seconds: float) -> dict[str, dict]:
    return {str(rate): measure_rate(rate, seconds) for rate in rates_hz}


def run(args) -> int:
    seconds = args.seconds
    if not seconds > 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    print(
        f"FastLoop at {' and '.join(map(str, RATES_HZ))} Hz, {seconds:g} s each, while a slow "
        f"process posts observations at {SLOW_RATE_HZ:g} Hz, {LATENCY_S * 1000:g} ms late (each "
        "tick: the runtime's own tick on the shipped grasp model)"
    )
    results = measure(RATES_HZ, seconds)
    rows = [("rate", "ticks", "jitter p50 µs", "jitter p99 µs", "max µs", "overruns", "obs", "")]
    ok = True
    for rate, r in results.items():
        met = (
            verdict(r["jitter_us_p99"], TARGETS["jitter_us_p99"]) == "met"
            and r["overruns"] <= TARGETS["overruns"]
        )
        ok = ok and met
        rows.append(
            (
                f"{rate} Hz",
                r["ticks"],
                f"{r['jitter_us_p50']:.0f}",
                f"{r['jitter_us_p99']:.0f}",
                f"{r['jitter_us_max']:.0f}",
                r["overruns"],
                r["observations"],
                "met" if met else "MISSED",
            )
        )
    print(format_table(rows))
    print(f"targets: jitter p99 <= {TARGETS['jitter_us_p99']:g} µs and no overruns, at each rate")
    print(load_note())
    write_json(
        args.json,
        {
            **results,
            "targets": TARGETS,
            "load_avg_1min": os.getloadavg()[0],
            "machine": machine(),
        },
    )
    return 0


if __name__ == "__main__":
    post_observations(sys.argv[1], float(sys.argv[2]))
