"""Runs for days: every buffer, history and statistic the runtime keeps is bounded (issue 9,
finding 9). Python-level allocations are traced over 2,000 ticks after a warm-up while
observations and chunks keep arriving; `kiwi bench soak` measures resident memory over 30 min."""

from __future__ import annotations

import tracemalloc

import numpy as np

from drivers.sim_arm import SimArm
from robot_runtime import link
from robot_runtime.chunk_modes import ChunkPolicy
from robot_runtime.controllers import ChunkFollower
from robot_runtime.loop import LoopStats, Ring
from robot_runtime.service import Runtime

from .runtime_helpers import grasp_job, tiny_grasp_model


def test_ring_keeps_the_last_samples_in_fixed_memory():
    ring = Ring(5)
    for v in range(12):
        ring.append(float(v))
    assert len(ring) == 5 and ring.values().tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert sorted(ring.last(3).tolist()) == [9.0, 10.0, 11.0]
    assert ring.buf.nbytes == 5 * 8


def test_the_chunk_queue_is_bounded():
    follower = ChunkFollower(max_steps=100)
    follower.add(0, np.zeros((5000, 6)))
    assert len(follower) == 100 and max(follower.queue) == 99


def test_runtime_ticks_do_not_grow_python_memory():
    job = grasp_job()
    arm = SimArm(seed=5)
    arm.connect()
    rt = Runtime(job, tiny_grasp_model(), arm, bind_sockets=False, policy=ChunkPolicy(0.02))
    rt.start_attempt(5, arm.read_joints())
    rt.loop = type("LoopStub", (), {"stats": LoopStats(), "overruns": 0})()
    t0 = rt.attempt.t_start

    def ticks(k0, n):
        for k in range(k0, k0 + n):
            t = t0 + k * rt.period
            if k % 10 == 0:  # the slow process: an observation with a chunk at 5 Hz
                rt.observe(
                    link.decode(
                        link.encode(
                            "obs",
                            {
                                "state": arm.read_joints().astype(np.float32),
                                "object": np.array([0, 0.01, 0.2, 5], np.float32),
                                "actions": np.zeros((25, 6), np.float32),
                            },
                            t_capture=t - 0.1,
                            meta={"t_first": t, "dt": 0.02},
                        )
                    ),
                    t,
                )
            rt.loop.stats.jitter_s.append(0.0)
            rt.tick(k, t)
            rt.status()

    tracemalloc.start()  # before the warm-up: objects it replaces later are traced too
    ticks(0, 1000)  # warm-up: the estimator's ring fills, caches settle
    before = tracemalloc.take_snapshot()
    ticks(1000, 2000)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    top = after.compare_to(before, "lineno")[:5]
    assert growth < 64 * 1024, f"{growth} bytes more after 2000 ticks: {top}"
    rt.close()
    arm.disconnect()
