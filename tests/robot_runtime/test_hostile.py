"""Hostile messages against a live `kiwi run` on the servo emulator (issue 9).

One `kiwi run` process (chunk controller, a tiny world model) runs on an emulated SO-101 bus for
the whole module. Each test sends well-formed but hostile messages, or floods, then asks the
runtime's status over its query socket: every message must be counted as a rejection with its
reason, the process must stay alive, the servos must keep their torque, and the loop must keep
ticking. A valid chunk afterwards must still move the arm.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from drivers.virtual_bus import VirtualBus
from robot_runtime import link
from robot_runtime.dryrun import free_ports

from .runtime_helpers import tiny_checkpoint

pytestmark = pytest.mark.slow

CAL = {
    name: {"id": i + 1, "drive_mode": 0, "homing_offset": 0, "range_min": 1000, "range_max": 3000}
    for i, name in enumerate(
        ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
    )
}


def raw(kind="obs", t_capture=None, fields=(), meta=None, frames=()) -> list[bytes]:
    """A message built by hand: the header may say anything JSON can (NaN tokens included)."""
    header = {
        "v": 1,
        "kind": kind,
        "seq": 0,
        "t_capture": time.monotonic() if t_capture is None else t_capture,
        "fields": list(fields),
        "meta": meta or {},
    }
    return [json.dumps(header).encode(), *frames]


def chunk_msg(actions, meta=None, t_capture=None) -> list[bytes]:
    actions = np.asarray(actions)
    field = {"name": "actions", "dtype": actions.dtype.name, "shape": list(actions.shape)}
    return raw("obs", t_capture, [field], meta, [actions.tobytes()])


class Live:
    def __init__(self, bus, proc, obs_port, query_port):
        self.bus, self.proc = bus, proc
        self.ctx = link.Context()
        self.push = self.ctx.connect(zmq.PUSH, f"tcp://127.0.0.1:{obs_port}", hwm=100_000)
        self.query_address = f"tcp://127.0.0.1:{query_port}"
        self.req = self.ctx.connect(zmq.REQ, self.query_address)

    def status(self) -> dict:
        self.req.send_multipart(link.encode("status"))
        assert self.req.poll(5000), "the runtime did not answer a status query"
        return link.decode(self.req.recv_multipart()).header.meta

    def send_all(self, messages) -> None:
        for frames in messages:
            self.push.send_multipart(frames)

    def wait_rejected(self, before: int, n: int, timeout_s: float = 10) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            if status["rejected"] >= before + n:
                return status
            time.sleep(0.05)
        raise AssertionError(f"expected {n} more rejections, status: {status}")

    def torque_on(self) -> bool:
        return all(self.bus.servo(i).torque for i in range(1, 7))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "so101.json").write_text(json.dumps(CAL))
    ckpt = tiny_checkpoint(tmp / "wm.safetensors")
    obs_port, query_port, tele_port = free_ports(3)
    with VirtualBus("feetech", {i: "sts3215" for i in range(1, 7)}) as bus:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "robot_runtime.cli",
                "run",
                "--robot",
                "so101",
                "--port",
                bus.port,
                "--calibration",
                str(tmp / "so101.json"),
                "--json",
                "--controller",
                "chunk",
                "--out",
                str(tmp / "run"),
                "--set",
                f"runtime.checkpoint={ckpt}",
                "--set",
                f"link.obs=tcp://127.0.0.1:{obs_port}",
                "--set",
                f"link.query=tcp://127.0.0.1:{query_port}",
                "--set",
                f"link.telemetry=tcp://127.0.0.1:{tele_port}",
                "--set",
                "safety.hold_after_s=100",  # hostile traffic must not be what keeps it moving
                "--set",
                "safety.slow_after_s=50",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        else:
            raise AssertionError("kiwi run did not start: " + proc.stdout.read())
        live = Live(bus, proc, obs_port, query_port)
        yield live
        live.ctx.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        summary = json.loads(out.strip().splitlines()[-1])  # --json: valid JSON, no NaN
        assert summary["rejected"] > 0 and summary["fault"] is None
        print("\nkiwi run after the hostile suite:", json.dumps(summary["loop"]))


def now() -> float:
    return time.monotonic()


def hostile_chunks() -> dict[str, list[bytes]]:
    ok = np.zeros((10, 6), np.float32)
    return {
        "t_first string": chunk_msg(ok, {"t_first": "abc", "dt": 0.02}),
        "t_first NaN": chunk_msg(ok, {"t_first": float("nan"), "dt": 0.02}),
        "t_first Infinity": chunk_msg(ok, {"t_first": float("inf"), "dt": 0.02}),
        "t_first -Infinity": chunk_msg(ok, {"t_first": float("-inf"), "dt": 0.02}),
        "t_first 1e308": chunk_msg(ok, {"t_first": 1e308, "dt": 0.02}),
        "t_first an hour ago": chunk_msg(ok, {"t_first": now() - 3600, "dt": 0.02}),
        "t_first tomorrow": chunk_msg(ok, {"t_first": now() + 86400, "dt": 0.02}),
        "t_first bool": chunk_msg(ok, {"t_first": True, "dt": 0.02}),
        "t_first object": chunk_msg(ok, {"t_first": {"a": 1}, "dt": 0.02}),
        "dt negative": chunk_msg(ok, {"t_first": now(), "dt": -0.02}),
        "dt zero": chunk_msg(ok, {"t_first": now(), "dt": 0.0}),
        "dt list": chunk_msg(ok, {"t_first": now(), "dt": [1]}),
        "dt 20000": chunk_msg(ok, {"t_first": now(), "dt": 20000}),
        "dt NaN": chunk_msg(ok, {"t_first": now(), "dt": float("nan")}),
        "dt tiny": chunk_msg(ok, {"t_first": now(), "dt": 1e-300}),
        "span too long": chunk_msg(np.zeros((200, 6), np.float32), {"dt": 0.9}),
        "0 rows": chunk_msg(np.zeros((0, 6), np.float32), {"t_first": now(), "dt": 0.02}),
        "too many rows": chunk_msg(np.zeros((5000, 6), np.float32)),
        "5 joints": chunk_msg(np.zeros((10, 5), np.float32)),
        "3-d": chunk_msg(np.zeros((2, 10, 6), np.float32)),
        "1-d": chunk_msg(np.zeros(6, np.float32)),
        "NaN row": chunk_msg(np.full((3, 6), np.nan, np.float32)),
        "inf value": chunk_msg(np.full((3, 6), np.inf, np.float64)),
        "bool dtype": chunk_msg(np.ones((3, 6), bool)),
        "capture in the future": chunk_msg(ok, t_capture=now() + 60),
        "capture NaN": chunk_msg(ok, t_capture=float("nan")),
        "capture -1e300": chunk_msg(ok, t_capture=-1e300),
    }


def hostile_observations() -> dict[str, list[bytes]]:
    def obs(state, obj, t_capture=None):
        arrays = {"state": np.asarray(state), "object": np.asarray(obj)}
        fields = [
            {"name": k, "dtype": v.dtype.name, "shape": list(v.shape)} for k, v in arrays.items()
        ]
        return raw("obs", t_capture, fields, None, [v.tobytes() for v in arrays.values()])

    s, o = np.zeros(6, np.float32), np.array([0, 0.01, 0.2, 5.0], np.float32)
    return {
        "state NaN": obs(np.full(6, np.nan, np.float32), o),
        "object inf": obs(s, np.full(4, np.inf, np.float32)),
        "state short": obs(np.zeros(5, np.float32), o),
        "object 2-d": obs(s, np.zeros((2, 4), np.float32)),
        "state scalar": obs(np.float32(1.0), o),
        "object bool": obs(s, np.ones(4, bool)),
        "capture future": obs(s, o, now() + 3600),
        "capture ancient": obs(s, o, now() - 3600),
        "no fields": raw("obs"),
        "object only": raw(
            "obs", None, [{"name": "object", "dtype": "float32", "shape": [4]}], None, [o.tobytes()]
        ),
        "wrong kind": raw("status"),
        "meta 200 levels deep": raw("obs", meta={"x": json.loads("[" * 200 + "]" * 200)}),
    }


def test_hostile_chunks_are_rejected_and_counted(live):
    before = live.status()
    cases = hostile_chunks()
    live.send_all(cases.values())
    after = live.wait_rejected(before["rejected"], len(cases))
    assert after["rejected"] == before["rejected"] + len(cases)
    assert after["loop"]["ticks"] > before["loop"]["ticks"]
    assert {"chunk_meta", "chunk_size", "shape", "non_finite", "time", "dtype"} <= set(
        after["rejections"]
    )
    assert live.proc.poll() is None and live.torque_on()


def test_hostile_observations_are_rejected_and_counted(live):
    before = live.status()
    cases = hostile_observations()
    live.send_all(cases.values())
    after = live.wait_rejected(before["rejected"], len(cases))
    assert after["rejected"] == before["rejected"] + len(cases)
    assert after["estimator"]["applied"] == before["estimator"]["applied"]
    assert live.proc.poll() is None and live.torque_on()


def test_garbage_frames_are_rejected(live):
    before = live.status()
    cases = [
        [b"\xff\xfe not json"],
        [b"[]"],
        [b'{"v": 1}'],
        [b'{"v": 1, "kind": "obs", "seq": -1, "t_capture": 0}'],
        raw(fields=[{"name": "x", "dtype": "object", "shape": [1]}], frames=[b"\x00" * 8]),
        raw(fields=[{"name": "x", "dtype": "float32", "shape": [2**40]}], frames=[b""]),
        raw(fields=[{"name": "x", "dtype": "float32", "shape": [2]}]),  # frame missing
        [
            b'{"v":1,"kind":"obs","seq":0,"t_capture":0,"meta":{"a":'
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}}"
        ],
    ]
    live.send_all(cases)
    after = live.wait_rejected(before["rejected"], len(cases))
    assert after["rejected"] == before["rejected"] + len(cases)
    assert live.proc.poll() is None and live.torque_on()


def test_floods_are_bounded_and_a_valid_chunk_still_moves_the_arm(live):
    """2,000 valid observations as fast as ZeroMQ takes them, 2,000 hostile chunks, 300 status
    requests pipelined on one connection: the loop keeps ticking (its overruns are reported,
    not asserted: speed is measured by benchmarks), then a valid chunk moves the pan joint."""
    before = live.status()
    t = now()
    good = link.encode(
        "obs",
        {"state": np.zeros(6, np.float32), "object": np.array([0, 0.01, 0.2, 5], np.float32)},
        t_capture=t,
    )
    live.send_all([good] * 2000)
    bad = chunk_msg(np.zeros((10, 6), np.float32), {"t_first": t, "dt": 20000})
    live.send_all([bad] * 2000)
    dealer = live.ctx.connect(zmq.DEALER, live.query_address, hwm=1000)
    for _ in range(300):
        dealer.send_multipart([b"", *link.encode("status")])
    answered, deadline = 0, time.monotonic() + 20
    while answered < 300 and time.monotonic() < deadline:
        if dealer.poll(100):
            dealer.recv_multipart()
            answered += 1
    assert answered == 300
    after = live.wait_rejected(before["rejected"], 2000, timeout_s=30)
    loop_before, loop_after = before["loop"], after["loop"]
    print(
        f"\nflood: {loop_after['ticks'] - loop_before['ticks']} ticks, "
        f"{loop_after['overruns'] - loop_before['overruns']} overruns, "
        f"{loop_after['skipped'] - loop_before['skipped']} skipped slots"
    )
    assert loop_after["ticks"] > loop_before["ticks"]
    assert live.proc.poll() is None and live.torque_on()
    # The arm still follows a valid chunk: pan to +20 degrees.
    target = np.array([20.0, 0, 0, 0, 0, 50.0], np.float32)
    start = live.bus.servo(1).get("Goal_Position")
    deadline = time.monotonic() + 15  # a loaded machine may lag; the arm must move in the end
    while live.bus.servo(1).get("Goal_Position") == start and time.monotonic() < deadline:
        live.push.send_multipart(
            link.encode(
                "obs",
                {"actions": np.repeat(target[None], 25, 0)},
                t_capture=now(),
                meta={"t_first": now(), "dt": 0.02},
            )
        )
        time.sleep(0.1)
    assert live.bus.servo(1).get("Goal_Position") != start
