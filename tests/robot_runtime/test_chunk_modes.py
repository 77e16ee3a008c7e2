"""Chunk execution modes (issue 13 item 4) on the real control step, in stepped time: a real
simulated arm, the real estimator on a small world model, safety as the runtime applies it."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.sim_arm import SimArm
from robot_runtime.chunk_modes import (
    BLEND,
    LATENT,
    LATEST,
    ChunkPolicy,
    join_offset,
    object_xy,
    shift_rows,
    unsafe_rows,
)
from robot_runtime.config import ChunkExecution, SafetySection
from robot_runtime.control import ControlStep
from robot_runtime.estimator import LatentEstimator
from robot_runtime.messages import Chunk
from robot_runtime.safety import BusHealth
from sim.kinematics import JOINT_LIMITS_DEG, forward, reach_top_down

from .runtime_helpers import tiny_grasp_model

PERIOD = 0.02
MAX_STEP = 4.0


def reaching_rows(n: int, x0: float = 0.19, speed_mps: float = 0.0) -> np.ndarray:
    """A top-down hand above the table at 8 cm, gripper open, moving along y."""
    rows = []
    for k in range(n):
        q = reach_top_down(np.array([x0, 0.02 + speed_mps * k * PERIOD]), 0.08, 0.3)
        rows.append(np.append(np.degrees(q), 100.0))
    return np.array(rows)


def control(mode: str, config: ChunkExecution | None = None, seed: int = 3):
    wm = tiny_grasp_model()
    arm = SimArm(seed=seed)
    arm.connect()
    policy = ChunkPolicy(PERIOD, mode, config, arm.limits, MAX_STEP)
    step = ControlStep(
        wm,
        LatentEstimator(wm, PERIOD, buffer_ticks=256, seed=seed, budget_s=1e9),
        policy,
        arm,
        SafetySection(max_step_deg=MAX_STEP, slow_after_s=0.6, hold_after_s=1.5),
        BusHealth(25, 0.2, 500),
        PERIOD,
    )
    step.start(0.0, arm.read_joints())
    return step, policy, arm


def run(step, chunks: dict[int, Chunk], ticks: int) -> np.ndarray:
    """Commands of ticks 0..ticks-1; ``chunks[k]`` arrives at tick k (before its step)."""
    out = []
    for k in range(ticks):
        if k in chunks:
            step.chunk(chunks[k], k * PERIOD)
        out.append(step(k, k * PERIOD).command)
    return np.array(out)


def two_chunks(arm: SimArm, offset_deg: float) -> tuple[np.ndarray, np.ndarray, dict[int, Chunk]]:
    """A chunk from tick 0 (from where the arm is, panning half a degree per tick), then one
    captured at tick 10 arriving at tick 20 whose rows differ by ``offset_deg`` on the
    elbow."""
    pan = np.zeros((60, 6))
    pan[:, 0] = 0.5 * np.arange(60)
    old = arm.read_joints() + pan
    old[:, 5] = 100.0
    new = old[10:] + np.array([0, 0, offset_deg, 0, 0, 0])
    chunks = {0: Chunk(old, 0.0, PERIOD, 0.0), 20: Chunk(new, 10 * PERIOD, PERIOD, 10 * PERIOD)}
    return old, new, chunks


def test_join_offset_starts_at_the_anchor_fades_out_and_keeps_steps_small():
    rows = reaching_rows(40)
    anchor = rows[0] + np.array([30.0, -10.0, 5.0, 0.0, 0.0, 0.0])
    joined = join_offset(rows, anchor, 10, MAX_STEP)
    assert np.allclose(joined[0], anchor)
    fade = int(np.ceil(1.5 * 30.0 / (0.5 * MAX_STEP)))  # 23 rows for a 30 degree offset
    assert np.allclose(joined[fade:], rows[fade:])
    extra = np.abs(np.diff(joined - rows, axis=0)).max()
    assert extra <= 0.5 * MAX_STEP + 1e-9


def test_shift_rows_moves_the_grasp_point_on_the_table_keeping_the_hand_top_down():
    rows = reaching_rows(25, speed_mps=0.05)
    shifted = shift_rows(rows, np.array([0.01, -0.02]), every=10)
    for k in range(25):  # solved at rows 0, 10, 20, 24; interpolated between
        before = forward(np.radians(rows[k, :5]))
        after = forward(np.radians(shifted[k, :5]))
        assert np.allclose(after.grasp - before.grasp, [0.01, -0.02, 0.0], atol=1.5e-3)
        assert np.allclose(after.hand[:, 2], before.hand[:, 2], atol=0.02), "still top-down"


def test_unsafe_rows_names_limits_and_jumps():
    rows = reaching_rows(5)
    assert unsafe_rows(rows, rows[0], JOINT_LIMITS_DEG, MAX_STEP, 1.0) is None
    past = rows.copy()
    past[2, 1] = JOINT_LIMITS_DEG[1, 1] + 5
    assert unsafe_rows(past, rows[0], JOINT_LIMITS_DEG, MAX_STEP, 1.0) == "limits"
    jump = rows.copy()
    jump[3:, 0] += 10.0
    assert unsafe_rows(jump, rows[0], JOINT_LIMITS_DEG, MAX_STEP, 1.0) == "jump"


def test_latest_jumps_blend_weighs_and_latent_joins_without_a_jump():
    commands = {}
    for mode in (LATEST, BLEND, LATENT):
        step, policy, arm = control(mode, ChunkExecution(object_shift=False))
        old, new, chunks = two_chunks(arm, 12.0)
        commands[mode] = run(step, chunks, 60)
        assert policy.stats.taken == 2 and list(policy.stats.boundaries) == [0, 20]
        # before the second chunk every mode follows the first
        assert np.allclose(commands[mode][5:20], old[5:20], atol=1e-6)
    elbow = {m: np.diff(c[:, 2]) for m, c in commands.items()}
    # latest: the full 12 degrees at tick 20, clamped by safety to one step per tick
    assert elbow[LATEST][19] == pytest.approx(MAX_STEP + (old[20, 2] - old[19, 2]), abs=1e-6)
    assert np.allclose(commands[LATEST][25:], new[15:50], atol=1e-6)
    # blend: 0.3 old + 0.7 new over the overlap (8.4 degrees: clamped at the first tick too)
    blended = 0.3 * old[20:60] + 0.7 * new[10:50]
    assert np.allclose(commands[BLEND][25:], blended[5:], atol=1e-6)
    assert elbow[BLEND][19] > 0.5 * MAX_STEP
    # latent: continuous (the fade moves at most half a safety step per tick), then the new rows
    assert np.abs(elbow[LATENT][19:] - np.diff(new[9:50, 2])).max() <= 0.5 * MAX_STEP + 1e-6
    assert np.allclose(commands[LATENT][50:], new[40:50], atol=1e-6)


def test_latent_refuses_a_chunk_past_a_limit_and_the_old_chunk_goes_on():
    step, policy, arm = control(LATENT, ChunkExecution(object_shift=False))
    old, new, chunks = two_chunks(arm, 0.0)
    new[20:, 1] = JOINT_LIMITS_DEG[1, 1] + 20.0
    commands = run(step, chunks, 50)
    assert policy.stats.refused == {"limits": 1} and policy.stats.taken == 1
    assert np.allclose(commands[20:50], old[20:50], atol=1e-6)


def test_the_control_step_gives_the_policy_the_arms_own_limits(monkeypatch):
    step, policy, arm = control(LATENT)
    narrow = arm.limits * 0.5  # a smaller arm than the simulator's
    monkeypatch.setattr(SimArm, "limits", property(lambda self: narrow))
    step.start(1.0, arm.read_joints())
    assert np.array_equal(policy.limits, narrow)


def test_latest_passes_the_same_chunk_through_safety_to_the_limit():
    step, policy, arm = control(LATEST)
    old, new, chunks = two_chunks(arm, 0.0)
    new[20:, 1] = JOINT_LIMITS_DEG[1, 1] + 20.0
    commands = run(step, chunks, 80)
    assert policy.stats.refused == {}
    assert commands[:, 1].max() <= arm.limits[1, 1] + 1e-9
    assert np.abs(np.diff(commands[:, :5], axis=0)).max() <= MAX_STEP + 1e-9


def test_latent_moves_the_chunk_by_the_objects_displacement_in_the_belief():
    """With observations applied, the object shift is the belief now against the belief at the
    chunk's capture, each decoded to the table; zero when the chunk is placed at its capture
    tick (no delay)."""
    step, policy, arm = control(LATENT)
    est = step.estimator
    old, new, chunks = two_chunks(arm, 0.0)
    shifts = {}
    for k in range(40):
        if k % 5 == 0:
            joints = step.read_joints().astype(np.float32)
            cube = np.array([0.0, 0.01 * k / 40, 0.2, 5.0], np.float32)
            step.observe({"state": joints, "object": cube}, k * PERIOD, k * PERIOD)
        if k in chunks:
            expected = object_xy(est.wm, est.state) - object_xy(
                est.wm, est.state_at(chunks[k].t_capture)
            )
            step.chunk(chunks[k], k * PERIOD)
        step(k, k * PERIOD)
        if k in chunks:
            shifts[k] = (policy.stats.last_shift_mm, min(np.linalg.norm(expected) * 1e3, 50.0))
    assert shifts[0][0] == 0.0  # placed at its own capture tick
    assert shifts[20][0] == pytest.approx(shifts[20][1], rel=1e-5)
    assert shifts[20][0] > 0.0
