"""The runtime's tick with real ZeroMQ sockets on loopback and the simulated arm in-process."""

import time

import numpy as np
import pytest
import zmq

from drivers.sim_arm import SimArm
from robot_runtime import link
from robot_runtime.dryrun import free_ports
from robot_runtime.service import Runtime

from .runtime_helpers import grasp_job, tiny_grasp_model


@pytest.fixture
def runtime():
    obs, query, tele = free_ports(3)
    job = grasp_job(
        f"link.obs=tcp://127.0.0.1:{obs}",
        f"link.query=tcp://127.0.0.1:{query}",
        f"link.telemetry=tcp://127.0.0.1:{tele}",
        "safety.slow_after_s=0.2",
        "safety.hold_after_s=0.4",
    )
    arm = SimArm(seed=3)
    arm.connect()
    rt = Runtime(job, tiny_grasp_model(), arm)
    rt.start_attempt(3, arm.read_joints())
    ctx = link.Context()
    push = ctx.connect(zmq.PUSH, job.link.obs)
    req = ctx.connect(zmq.REQ, job.link.query)
    yield rt, push, req, job
    ctx.close()
    rt.close()
    arm.disconnect()


def tick_until(rt, k0, n, predicate=lambda: False):
    """Ticks k0 .. k0+n-1 on the runtime's clock (the attempt started at its tick 0)."""
    t0 = rt.attempt.t_start
    for k in range(k0, k0 + n):
        rt.tick(k, t0 + k * rt.period)
        if predicate():
            return k + 1
        time.sleep(0.002)  # let messages arrive on the sockets
    return k0 + n


def good_obs(t_capture, seq=1):
    return link.encode(
        "obs",
        {"state": np.zeros(6, np.float32), "object": np.array([0.0, 0.01, 0.2, 5.0], np.float32)},
        seq=seq,
        t_capture=t_capture,
    )


def test_malformed_messages_are_counted_and_the_loop_keeps_ticking(runtime):
    rt, push, _, _ = runtime
    k = tick_until(rt, 0, 5)
    bad = [
        [b"\xff\xfe not json"],
        [b'{"v": 99, "kind": "obs", "seq": 1, "t_capture": 0.0}'],
        link.encode("obs", {"state": np.zeros(6, np.float32)}, t_capture=0.0)[:1],  # frame lost
        link.encode(
            "obs",
            {
                "state": np.zeros(5, np.float32),  # wrong size for the model
                "object": np.zeros(4, np.float32),
            },
            t_capture=0.0,
        ),
        link.encode("camera", {"x": np.zeros(3, np.float32)}, t_capture=0.0),  # wrong kind
        [link.encode("obs", t_capture=0.0)[0], b"\x00" * (17 * 1024 * 1024)],  # oversized
    ]
    for frames in bad:
        push.send_multipart(frames)
    k = tick_until(rt, k, 200, lambda: rt.rejected_total() >= len(bad))
    assert rt.rejected_total() == len(bad)
    assert rt.estimator.stats.applied == 0
    push.send_multipart(good_obs(t_capture=rt.attempt.t_start + (k - 2) * rt.period))
    k = tick_until(rt, k, 100, lambda: rt.estimator.stats.applied == 1)
    assert rt.estimator.stats.applied == 1
    assert rt.estimator.tick == k  # a belief for every tick: nothing stalled


def test_query_socket_answers_status_and_clock_and_rejects_garbage(runtime):
    rt, _, req, _ = runtime

    def ask(frames):
        req.send_multipart(frames)
        for k in range(200):
            rt.tick(k, rt.attempt.t_start + k * rt.period)
            if req.poll(5):
                return link.decode(req.recv_multipart())
        raise AssertionError("no reply")

    status = ask(link.encode("status"))
    assert status.kind == "status" and status.header.meta["phase"] == "wait"
    clock = ask(link.encode("clock"))
    assert abs(clock.header.meta["t"] - time.monotonic()) < 1.0
    error = ask([b"garbage"])
    assert error.kind == "error" and "not UTF-8 JSON" in error.header.meta["error"]
    error = ask(link.encode("dance"))
    assert error.kind == "error" and "unknown query kind 'dance'" in error.header.meta["error"]


def test_without_observations_the_grasp_searches_slowly_and_a_chunk_policy_holds(runtime):
    rt, push, _, job = runtime
    push.send_multipart(good_obs(t_capture=rt.attempt.t_start))
    k = tick_until(rt, 0, 100, lambda: rt.estimator.stats.applied == 1)
    assert rt.estimator.stats.applied == 1
    # No more observations: past hold_after_s (0.4 s = 20 ticks) the watchdog holds; the grasp
    # policy searches for the cube, moving no faster than the slow step.
    k = tick_until(rt, k, 25)
    assert rt.watchdog.mode(rt.attempt.t_start + k * rt.period) == "hold"
    assert rt.policy.phase == "search"
    slow_step = job.safety.max_step_deg * job.safety.slow_factor
    for _ in range(10):
        before = rt.command.copy()
        k = tick_until(rt, k, 1)
        assert np.all(np.abs(rt.command - before) <= slow_step + 1e-9)
    # A policy that cannot search (VLA chunks) is held where it is.
    from robot_runtime.chunk_modes import ChunkPolicy

    rt.policy = ChunkPolicy(rt.period)
    rt.policy.reset(rt.attempt.t_start)
    rt.policy.follower.add(k, np.tile(rt.command + 5.0, (50, 1)))
    held = rt.command.copy()
    tick_until(rt, k, 10)
    assert np.array_equal(rt.command, held)


def test_a_second_attempt_aims_only_after_its_own_first_observation(runtime):
    """Issue 10, item 1: attempts 2 and 3 of `kiwi sim` aimed at the latent's untrained default
    (the estimator's counter of applied observations never reset, so the policy did not wait).
    Each attempt now starts from a clean estimator, counters included, and an observation
    captured before the attempt began is not applied to it."""
    rt, push, _, _ = runtime
    push.send_multipart(good_obs(t_capture=rt.attempt.t_start))
    k = tick_until(rt, 0, 100, lambda: rt.policy.phase == "approach")
    assert rt.policy.phase == "approach" and rt.estimator.stats.applied == 1
    first_attempt_end = rt.attempt.t_start + k * rt.period

    rt.start_attempt(4, rt.arm.read_joints())  # the next attempt, on the runtime's clock
    assert rt.estimator.stats.applied == 0 and rt.policy.phase == "wait"
    push.send_multipart(good_obs(t_capture=first_attempt_end - 0.05, seq=2))  # an old capture
    k = tick_until(rt, 0, 30)
    assert rt.policy.phase == "wait", "aimed before an observation of its own"
    assert rt.estimator.stats.applied == 0 and rt.estimator.stats.dropped["too_old"] == 1
    push.send_multipart(good_obs(t_capture=rt.attempt.t_start + (k - 2) * rt.period, seq=3))
    tick_until(rt, k, 100, lambda: rt.policy.phase == "approach")
    assert rt.policy.phase == "approach" and rt.estimator.stats.applied == 1
