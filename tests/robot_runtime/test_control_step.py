"""One control step (issue 11): the realtime runtime (its sockets, message checks and queries
around the step) and the lockstep path (the step fed directly) command the arm identically when
fed the same joints, observations and clock, bit for bit."""

from __future__ import annotations

import numpy as np
import zmq

from drivers.sim_arm import SimArm
from robot_runtime import link
from robot_runtime.control import ControlStep
from robot_runtime.controllers import GraspController, GraspPolicy
from robot_runtime.dryrun import free_ports
from robot_runtime.estimator import LatentEstimator
from robot_runtime.loop import SteppedClock
from robot_runtime.safety import BusHealth
from robot_runtime.service import Runtime

from .runtime_helpers import grasp_job, tiny_grasp_model

TICKS = 160
EVERY, DELAY = 10, 7  # an observation every 10 ticks, arriving 7 ticks after its capture


def policy(job):
    return GraspPolicy(GraspController(job.controller), max_belief_age_s=job.gate.max_belief_age_s)


def observation(joints: np.ndarray, k: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(k)
    cube = np.array([0.0, 0.02, 0.22, 10.0]) + rng.normal(0, [0.002, 0.002, 0.002, 2.0])
    return {"state": joints.astype(np.float32), "object": cube.astype(np.float32)}


def test_realtime_and_lockstep_paths_command_the_same_bits():
    obs_port, query_port, tele_port = free_ports(3)
    job = grasp_job(
        f"link.obs=tcp://127.0.0.1:{obs_port}",
        f"link.query=tcp://127.0.0.1:{query_port}",
        f"link.telemetry=tcp://127.0.0.1:{tele_port}",
    )
    wm = tiny_grasp_model()
    period = 1.0 / job.runtime.rate_hz
    t0 = 100.0

    # realtime: the runtime's shell with real sockets, on a stepped clock
    arm_rt = SimArm(seed=11)
    arm_rt.connect()
    rt = Runtime(job, wm, arm_rt, clock=SteppedClock(t0), policy=policy(job))
    rt.estimator.budget_s = 1e9  # replays inline in both paths (timing must not decide)
    rt.start_attempt(11, arm_rt.read_joints())
    ctx = link.Context()
    push = ctx.connect(zmq.PUSH, job.link.obs)

    # lockstep: the same step, fed directly
    arm_ls = SimArm(seed=11)
    arm_ls.connect()
    s = job.safety
    step = ControlStep(
        wm,
        LatentEstimator(
            wm, period, job.runtime.buffer_ticks, "compensated", job.runtime.seed, budget_s=1e9
        ),
        policy(job),
        arm_ls,
        s,
        BusHealth(25, 0.2, 500),
        period,
    )
    step.start(t0, arm_ls.read_joints())

    captured: dict[int, dict] = {}
    try:
        for k in range(TICKS):
            t = t0 + k * period
            if k % EVERY == 0:
                captured[k] = observation(arm_ls.read_joints(), k)
            arrival = k - DELAY
            if arrival in captured:
                obs, t_capture = captured.pop(arrival), t0 + arrival * period
                push.send_multipart(link.encode("obs", obs, seq=k, t_capture=t_capture))
                assert rt.obs_sock.poll(5000), "the observation did not reach the runtime"
                step.estimator.poll()
                step.observe(obs, t_capture, t)
            else:
                step.estimator.poll()
            rt.tick(k, t)
            step(k, t)
            assert np.array_equal(rt.command, step.command), f"tick {k}: the paths differ"
        assert rt.estimator.stats.applied == step.estimator.stats.applied >= 10
        assert rt.policy.phase == step.policy.phase != "wait"
    finally:
        ctx.close()
        rt.close()
        arm_rt.disconnect()
        arm_ls.disconnect()
