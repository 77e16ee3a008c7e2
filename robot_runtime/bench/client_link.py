"""`kiwi bench link`, second part: the slow-process client's round trip and its clock offset.

The client is its own process (``python -m robot_runtime.bench.client_link``): a ``SlowClient``
and a ``PolicyRunner`` around a policy that costs nothing (it returns a chunk it made once), so
what is timed is the client's own work: receive and check the frame, build the policy's
observation, hand it to the policy's worker thread and back, check the chunk, encode and post
it. The benchmark publishes 128x128x3 wrist frames with a 6-joint state on a PUB socket, each
stamped ``t_capture = time.monotonic()`` just before it is encoded, and takes the time again
when the chunk message that answers it is decoded: frame out, chunk in.

First, the client measures its clock offset to a runtime (``service.Runtime`` with the shipped
world model on a still arm, ticking at 50 Hz in this process, answering ``clock`` queries at its
ticks) through a clock shifted by an artificial offset; the error is the measured offset
against the true one. The runtime is stopped before the round trips are timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import numpy as np

from .. import link
from .common import percentiles_us

IMAGE_SHAPE = (128, 128, 3)
CHUNK = np.zeros((50, 6), np.float32)
ARTIFICIAL_OFFSET_S = 1234.5678
WARMUP = 20
TARGET_US_P99 = 1000.0


class StillArm:
    """An arm that stays where it is (the runtime here only answers clock queries)."""

    joint_names = ("pan", "lift", "elbow", "flex", "roll", "gripper")

    def __init__(self):
        from sim.kinematics import JOINT_LIMITS_DEG

        self.limits = np.asarray(JOINT_LIMITS_DEG, float)

    def read_joints(self) -> np.ndarray:
        return np.zeros(6)

    def write_targets(self, targets: np.ndarray) -> None:
        pass


class RuntimeThread:
    """``service.Runtime`` ticking at its rate on a thread, with the shipped world model."""

    def __init__(self, query: str, obs: str, telemetry: str):
        from ..chunk_modes import ChunkPolicy
        from ..config import GraspJob, load_config
        from ..service import Runtime, load_world_model

        overrides = [f"link.query={query}", f"link.obs={obs}", f"link.telemetry={telemetry}"]
        job, _ = load_config("sim_grasp", GraspJob, overrides)
        arm = StillArm()
        self.rt = Runtime(
            job, load_world_model(job.runtime.checkpoint), arm, policy=ChunkPolicy(0.02)
        )
        self.rt.start_attempt(0, arm.read_joints())
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        k, t_next = 0, time.monotonic()
        while not self.stop.is_set():
            self.rt.tick(k, time.monotonic())
            k += 1
            t_next += self.rt.period
            time.sleep(max(0.0, t_next - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.rt.close()


def serve_client(camera: str, obs: str, query: str | None, offset_s: float) -> None:
    """The client process: (clock offset, printed as one JSON line) then frames -> chunks."""
    from ..client import SlowClient, policy_observation
    from ..policy_runner import PolicyRunner

    client = SlowClient(camera, obs, query, clock=lambda: time.monotonic() + offset_s)
    if query is not None:
        measured = client.sync_clock(samples=16)
        error = measured.offset_s + offset_s
        print(json.dumps({"offset_error_s": error, "rtt_s": measured.rtt_s}), flush=True)
    runner = PolicyRunner(lambda observation: CHUNK, timeout_s=1.0)
    try:
        while True:
            if client.camera is None or not client.camera.poll(1000):
                continue
            t0 = time.perf_counter()  # the client's own time: decode and check to post
            frame = client.newest_frame()
            if frame is None:
                continue
            chunk = runner(policy_observation(frame, "bench"))
            own_us = (time.perf_counter() - t0) * 1e6
            client.post(frame.t_capture, chunk=chunk, dt=runner.dt, meta={"client_us": own_us})
    finally:
        client.close()


def measure_client(count: int, rate_hz: float, first_timeout_s: float = 30.0) -> dict:
    import zmq

    from ..dryrun import free_ports
    from .link import bind_receiver, stop

    ctx = link.Context()
    pub, camera = bind_receiver(ctx, zmq.PUB, hwm=4)
    pull, obs = bind_receiver(ctx, zmq.PULL, hwm=16)
    query, rt_obs, telemetry = (f"tcp://127.0.0.1:{p}" for p in free_ports(3))
    runtime: RuntimeThread | None = RuntimeThread(query, rt_obs, telemetry)
    cmd = [sys.executable, "-m", "robot_runtime.bench.client_link", camera, obs]
    cmd += ["--query", query, "--offset", str(ARTIFICIAL_OFFSET_S)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        clock = json.loads(proc.stdout.readline() or "{}")
        if runtime is not None:
            runtime.close()
            runtime = None
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
        state = np.zeros(6, np.float32)
        round_trip_s: list[float] = []
        client_s: list[float] = []
        period, seq, deadline = 1.0 / rate_hz, 0, time.monotonic() + first_timeout_s
        while len(round_trip_s) < count and time.monotonic() < deadline:
            seq += 1
            state[0] = seq % 90
            pub.send_multipart(
                link.encode(
                    "camera", {"wrist": image, "state": state}, seq=seq, t_capture=time.monotonic()
                ),
                copy=False,
            )
            if pull.poll(int(period * 1000)):
                msg = link.decode(pull.recv_multipart())
                if seq > WARMUP:  # the subscription's setup and the first calls
                    round_trip_s.append(time.monotonic() - msg.header.t_capture)
                    client_s.append(float(msg.header.meta.get("client_us", np.nan)) / 1e6)
                    deadline = time.monotonic() + 5.0
                time.sleep(max(0.0, period - (time.monotonic() - msg.header.t_capture)))
    finally:
        if runtime is not None:
            runtime.close()
        stop(proc)
        ctx.close()
    if not round_trip_s:
        raise RuntimeError("no chunk came back from the client process")
    p50, p99 = percentiles_us(round_trip_s)
    return {
        "round_trip_us_p50": p50,
        "round_trip_us_p99": p99,
        "round_trip_us_max": float(np.max(round_trip_s) * 1e6),
        "round_trips": len(round_trip_s),
        "client_us_p50": percentiles_us(client_s)[0],
        "client_us_p99": percentiles_us(client_s)[1],
        "clock_offset_error_us": abs(clock.get("offset_error_s", float("nan"))) * 1e6,
        "clock_rtt_us": clock.get("rtt_s", float("nan")) * 1e6,
        "artificial_offset_s": ARTIFICIAL_OFFSET_S,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="the slow-process client answering frames")
    p.add_argument("camera")
    p.add_argument("obs")
    p.add_argument("--query")
    p.add_argument("--offset", type=float, default=0.0, help="artificial clock offset, s")
    args = p.parse_args(argv)
    try:
        serve_client(args.camera, args.obs, args.query, args.offset)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
