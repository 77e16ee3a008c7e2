"""The slow-process client and any policy as the slow process, on real ZeroMQ sockets: the
runtime (service.Runtime with the chunk follower, a simulated arm) ticks at 50 Hz on a thread of
the test, the camera is a PUB socket of the test, the slow process is `SlowProcess` in the test's
thread. A policy that raises, hangs, answers NaN or the wrong shape never moves the arm: its
answers are refused, counted by reason on both sides, and the watchdog holds."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from drivers.sim_arm import SimArm
from robot_runtime import link
from robot_runtime.chunk_modes import ChunkPolicy
from robot_runtime.client import SlowClient
from robot_runtime.dryrun import free_ports
from robot_runtime.service import Runtime
from robot_runtime.slow import SlowProcess

from .runtime_helpers import grasp_job, tiny_grasp_model

ROOT = Path(__file__).resolve().parents[2]
IMAGE = np.zeros((64, 64, 3), np.uint8)  # black: the perception finds no cube, only chunks go


class RuntimeThread:
    """The runtime's tick at 50 Hz on real time, on a thread (sockets stay in that thread)."""

    def __init__(self, rt: Runtime):
        self.rt, self.stop = rt, threading.Event()
        self.commands: list[np.ndarray] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        k, t_next = 0, time.monotonic()
        while not self.stop.is_set():
            self.rt.tick(k, time.monotonic())
            self.commands.append(self.rt.command.copy())
            k += 1
            t_next += self.rt.period
            time.sleep(max(0.0, t_next - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def rig():
    camera, obs, query, tele = (f"tcp://127.0.0.1:{p}" for p in free_ports(4))
    job = grasp_job(
        f"link.camera={camera}",
        f"link.obs={obs}",
        f"link.query={query}",
        f"link.telemetry={tele}",
        "slow.latency_ms=0",
        "safety.slow_after_s=0.2",
        "safety.hold_after_s=0.4",
    )
    arm = SimArm(seed=3)
    arm.connect()
    rt = Runtime(job, tiny_grasp_model(), arm, policy=ChunkPolicy(1.0 / job.runtime.rate_hz))
    rt.start_attempt(3, arm.read_joints())
    ctx = link.Context()
    pub = ctx.bind(zmq.PUB, camera, hwm=100)
    runtime = RuntimeThread(rt)
    yield job, rt, runtime, pub
    runtime.close()
    ctx.close()
    rt.close()
    arm.disconnect()


def publish(pub, state) -> None:
    pub.send_multipart(
        link.encode("camera", {"wrist": IMAGE, "state": state}, t_capture=time.monotonic())
    )


def drive(slow: SlowProcess, pub, state, seconds: float) -> None:
    """Frames at 20 Hz and one slow-process cycle per frame, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        publish(pub, state)
        time.sleep(0.02)
        slow.step()
        time.sleep(0.03)


def raises(obs):
    raise RuntimeError("policy bug")


def nan_chunk(obs):
    return np.full((10, 6), np.nan)


def wrong_shape(obs):
    return np.zeros((10, 5))


class Hangs:
    def __init__(self):
        self.release = threading.Event()

    def __call__(self, obs):
        self.release.wait(30)
        return np.zeros((10, 6))


@pytest.mark.parametrize("kind", ["error", "timeout", "non_finite", "shape"])
def test_a_bad_policy_never_moves_the_arm_and_is_counted_on_both_sides(rig, kind, capsys):
    job, rt, runtime, pub = rig
    hangs = Hangs()
    policy = {"error": raises, "timeout": hangs, "non_finite": nan_chunk, "shape": wrong_shape}
    slow = SlowProcess(job, policy=policy[kind], policy_timeout_s=0.1)
    start = rt.command.copy()
    try:
        drive(slow, pub, np.asarray(rt.joints, np.float32), 1.0)
        status = slow.client.status(timeout_s=2.0)
    finally:
        hangs.release.set()
        slow.close()
    assert slow.stats.policy_rejections.get(kind, 0) >= 1, slow.stats.policy_rejections
    assert slow.stats.chunks == 0
    # the runtime's status shows the slow process's refusals by reason
    assert status["slow_process"]["rejections"].get(kind, 0) >= 1, status["slow_process"]
    assert status["rejected"] == 0  # nothing bad was sent: it never reached the runtime
    # the watchdog holds: no chunk, no observation for longer than hold_after_s
    assert status["watchdog"] == "hold"
    assert all(np.array_equal(c, start) for c in runtime.commands)
    if kind == "timeout":  # the hung call blocks later ones: counted as busy, not queued
        assert slow.stats.policy_rejections.get("busy", 0) >= 1
    assert f"refused the policy's answer (1 so far, {kind})" in capsys.readouterr().out


def test_a_good_policy_after_a_bad_one_moves_the_arm(rig):
    job, rt, runtime, pub = rig
    start = rt.command.copy()
    target = start + np.array([10.0, 0, 0, 0, 0, 0])

    class Reach:
        dt = 0.04

        def __call__(self, obs):
            assert obs["observation.state"].dtype == np.float32
            assert obs["observation.images.wrist"].shape == IMAGE.shape
            assert obs["task"] == "grasp the cube" and obs["timestamp"] > 0
            return np.tile(target, (25, 1))

    bad = SlowProcess(job, policy=nan_chunk)
    drive(bad, pub, np.asarray(rt.joints, np.float32), 0.3)
    bad.close()
    good = SlowProcess(job, policy=Reach())
    try:
        drive(good, pub, np.asarray(rt.joints, np.float32), 1.0)
        status = good.client.status()
    finally:
        good.close()
    assert good.stats.chunks >= 1 and good.stats.policy_rejections == {}
    assert not np.array_equal(rt.command, start)
    assert rt.command[0] > start[0] and np.allclose(rt.command[1:], start[1:])
    assert status["rejected"] == 0 and status["watchdog"] == "normal"


def test_clock_offset_over_the_status_socket_with_an_artificial_offset(rig):
    """A client whose clock is 1234.5678 s ahead of the runtime's measures the offset over the
    query socket, and moves frames stamped by a camera on its own clock (``camera_clock``
    local) onto the runtime's clock: a frame that would be 20 minutes in the future is
    accepted, stamped within the measured error of the runtime's time of capture."""
    job, rt, _, pub = rig
    offset = 1234.5678
    client = SlowClient(
        job.link.camera,
        job.link.obs,
        job.link.query,
        clock=lambda: time.monotonic() + offset,
        camera_clock="local",
    )
    try:
        measured = client.sync_clock(samples=12)
        assert client.status()["phase"] == "waiting"
        frame, deadline = None, time.monotonic() + 10
        while frame is None and time.monotonic() < deadline:
            t_true = time.monotonic()
            arrays = {"wrist": IMAGE, "state": np.zeros(6)}
            pub.send_multipart(link.encode("camera", arrays, t_capture=t_true + offset))
            frame = client.wait_frame(0.05)
    finally:
        client.close()
    assert frame is not None and client.stats.rejected == 0
    assert abs(frame.t_capture - t_true) < 0.01
    error = abs(measured.offset_s + offset)
    print(f"\nclock offset error {error * 1e6:.0f} µs, round trip {measured.rtt_s * 1e3:.2f} ms")
    assert measured.samples == 12
    assert error <= measured.error_bound_s + 1e-4  # within half the shortest round trip
    assert error < 0.01


def test_the_client_over_curve_reaches_a_curve_runtime(tmp_path):
    """A non-loopback runtime needs CURVE; here the same keys on loopback: the client with
    the right keys gets a status reply, a client with unknown keys gets none."""
    from robot_runtime.commands.runtime_tools import cmd_keys

    cmd_keys(type("A", (), {"out": str(tmp_path), "name": "slow", "role": "both", "force": False}))
    obs, query = (f"tcp://127.0.0.1:{p}" for p in free_ports(2))
    server = link.Context()
    keys = link.CurveKeys(tmp_path / "server.key_secret", tmp_path / "allowed_clients")
    rep = server.bind(zmq.REP, query, keys)
    link.make_keys(tmp_path / "intruder", "intruder")

    def client(secret):
        return SlowClient(
            None,
            obs,
            query,
            server_public_key=tmp_path / "server.key",
            client_secret=secret,
        )

    good, bad = (
        client(tmp_path / "slow.key_secret"),
        client(tmp_path / "intruder/intruder.key_secret"),
    )
    try:
        answer = threading.Thread(
            target=lambda: (
                rep.poll(5000)
                and (
                    rep.recv_multipart(),
                    rep.send_multipart(link.encode("clock", meta={"t": 5.0})),
                )
            )
        )
        answer.start()
        assert good.clock_sample(timeout_s=5.0).t_remote == 5.0
        answer.join()
        with pytest.raises(TimeoutError):
            bad.clock_sample(timeout_s=0.5)
    finally:
        good.close()
        bad.close()
        server.close()


def test_kiwi_slow_runs_a_policy_by_name_and_posts_its_chunks():
    """`kiwi slow --policy MODULE:FACTORY --policy-arg ...` as its own process: frames from a
    camera socket of the test in, the policy's chunks out on an observation socket of the
    test, stamped with the frame's capture time and the policy's dt."""
    camera, obs = (f"tcp://127.0.0.1:{p}" for p in free_ports(2))
    ctx = link.Context()
    pub = ctx.bind(zmq.PUB, camera, hwm=100)
    pull = ctx.bind(zmq.PULL, obs, hwm=100)
    cmd = [sys.executable, "-m", "robot_runtime.cli", "slow", "--duration", "60"]
    cmd += ["--policy", "tests.robot_runtime.fake_slow_policies:make_hold"]
    cmd += ["--policy-arg", "rows=5", "--policy-arg", "offset_deg=3"]
    for override in (f"link.camera={camera}", f"link.obs={obs}", "slow.latency_ms=0"):
        cmd += ["--set", override]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = np.array([1, 2, 3, 4, 5, 60], np.float32)
    try:
        deadline, sent = time.monotonic() + 60, {}
        while time.monotonic() < deadline and proc.poll() is None:
            t = time.monotonic()
            pub.send_multipart(link.encode("camera", {"wrist": IMAGE, "state": state}, t_capture=t))
            sent[t] = True
            if pull.poll(100):
                msg = link.decode(pull.recv_multipart())
                if msg.kind == "obs":  # (its counters come as slow_report messages)
                    break
        else:
            raise AssertionError(f"no chunk from kiwi slow: {proc.communicate(timeout=5)[0]}")
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=20)[0].decode()
        ctx.close()
    assert msg.kind == "obs" and set(msg.arrays) == {"actions"}  # black frames: no cube
    expected = np.tile(state + np.array([3, 0, 0, 0, 0, 0], np.float32), (5, 1))
    np.testing.assert_array_equal(msg.arrays["actions"], expected)
    assert msg.header.meta["dt"] == 0.1 and msg.header.t_capture in sent
    assert msg.header.meta["t_first"] == msg.header.t_capture
    assert "policy tests.robot_runtime.fake_slow_policies:make_hold" in out and "chunks" in out


def test_the_documented_example_runs_against_a_live_runtime(rig, capsys):
    """docs/slow_process.md's 20-line example, as written (its loop bounded, its addresses
    the test's), against the runtime: its chunks arrive, are followed and reported."""
    job, rt, runtime, pub = rig
    text = (ROOT / "docs" / "slow_process.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 22
    for default, address in (("5604", job.link.camera), ("5601", job.link.obs)):
        code = code.replace(f"tcp://127.0.0.1:{default}", address)
    code = code.replace("tcp://127.0.0.1:5602", job.link.query)
    code = code.replace("while True:", "for _ in range(10):")
    stop = threading.Event()

    def frames() -> None:
        while not stop.is_set():
            publish(pub, np.asarray(rt.joints, np.float32))
            time.sleep(0.02)

    followed = []
    on_chunk = rt.policy.on_chunk
    rt.policy.on_chunk = lambda chunk, t: (followed.append(chunk), on_chunk(chunk, t))
    camera = threading.Thread(target=frames, daemon=True)
    camera.start()
    try:
        namespace: dict = {}
        exec(compile(code, "slow_process.md", "exec"), namespace)
        namespace["client"].close()
        time.sleep(0.1)
    finally:
        stop.set()
        camera.join(5)
    status = rt.status()
    assert "runtime phase: waiting" in capsys.readouterr().out
    # on a loaded machine some of the 10 waits may see no frame: a few chunks suffice
    assert status["slow_process"]["counts"]["chunks"] >= 3
    assert len(followed) >= 3 and followed[-1].actions.shape == (25, 6)
    assert status["rejected"] == 0


def test_a_slow_report_reaches_the_runtime_status_and_a_bad_one_is_counted(rig):
    job, rt, _, _ = rig
    client = SlowClient(None, job.link.obs, job.link.query)
    try:
        client.report({"calls": 7, "chunks": 5}, {"timeout": 2})
        client.obs.send_multipart(link.encode("slow_report", meta={"rejections": {"x": -1}}))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = client.status()
            if status["rejections"].get("report") and status["slow_process"]:
                break
            time.sleep(0.05)
    finally:
        client.close()
    assert status["slow_process"]["counts"] == {"calls": 7, "chunks": 5}
    assert status["slow_process"]["rejections"] == {"timeout": 2}
    assert status["rejections"]["report"] == 1


def test_a_remote_slow_process_measures_the_clock_before_it_posts(rig, capsys):
    """`kiwi slow` against a runtime on another machine (forced here: the rig is on loopback)
    asks for the runtime's clock before its first cycle and says what it measured."""
    job, _, _, _ = rig
    slow = SlowProcess(job)
    slow.remote = True
    try:
        slow.run(duration_s=0.2)
    finally:
        slow.close()
    assert slow.client.offset.samples == 16 and abs(slow.client.offset.offset_s) < 0.01
    out = capsys.readouterr().out
    assert "runtime clock offset" in out and "round trip" in out
