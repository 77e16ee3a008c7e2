"""Forward and inverse kinematics of the Kiwi arm (pure numpy; radians and metres).

The chain matches sim/assets/kiwi_arm.xml and the SO-101's conventions (LeRobot's calibrated
middle of range is zero): at zero the upper arm stands up (tilted 14 degrees forwards), the
forearm, wrist and gripper point forwards (+x). Positive shoulder_lift leans forwards, positive
elbow_flex and wrist_flex bend down, positive shoulder_pan turns clockwise seen from above,
wrist_roll turns about the gripper's axis. The grasp point is 0.098 m beyond the roll joint.

- ``forward(q)`` gives the grasp point, the hand's rotation and the wrist camera's pose;
- ``ik_top_down(p, yaw)`` solves the top-down grasp pose in closed form (what the scripted policy
  and the runtime's grasp controller use: microseconds, no iterations);
- ``ik_dls(p, q0)`` is a general damped-least-squares solver for any reachable point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BASE_TO_PAN = 0.095  # pan axis height above the table
PAN_TO_LIFT = (0.030, 0.054)  # lift axis: forward and up from the pan joint (in the pan frame)
UPPER_ARM_VEC = (0.028, 0.1126)  # lift -> elbow at zero (forward, up): 0.116 m, 14 deg forwards
FOREARM = 0.135  # elbow -> wrist_flex, forwards at zero
WRIST_TO_ROLL = 0.061
ROLL_TO_GRASP = 0.098
WRIST_TO_GRASP = WRIST_TO_ROLL + ROLL_TO_GRASP
UPPER_ARM = math.hypot(*UPPER_ARM_VEC)
UPPER_ARM_TILT = math.atan2(*UPPER_ARM_VEC)  # angle of the upper arm from vertical at lift = 0
BASE_TO_LIFT = BASE_TO_PAN + PAN_TO_LIFT[1]
# Wrist camera pose in the hand frame (kiwi_arm.xml): position and its x/y axes.
CAMERA_POS = np.array([0.032, 0.0, 0.035])
_cx = np.array([0.0, 1.0, 0.0])
_cy = np.array([0.985, 0.0, -0.17]) / np.linalg.norm([0.985, 0.0, -0.17])
CAMERA_ROT_MUJOCO = np.stack([_cx, _cy, np.cross(_cx, _cy)], 1)  # columns: camera axes in hand

JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")
LIMITS_RAD = np.array(
    [[-1.919, 1.919], [-1.745, 1.745], [-1.69, 1.69], [-1.658, 1.658], [-2.793, 2.793]]
)
# The six commanded joints in LeRobot's units: degrees, and the gripper 0 (closed) .. 100 (open).
JOINT_LIMITS_DEG = np.vstack([np.degrees(LIMITS_RAD), [0.0, 100.0]])


def rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass(frozen=True)
class Pose:
    grasp: np.ndarray  # [3] grasp point (between the finger pads) in the world
    hand: np.ndarray  # [3, 3] hand rotation: columns are its x, y (finger closing), z (pointing)
    camera_pos: np.ndarray  # [3] wrist camera position
    camera_rot: np.ndarray  # [3, 3] camera axes in OpenCV convention (x right, y down, z forward)


def forward(q: np.ndarray) -> Pose:
    """Grasp point, hand rotation and wrist-camera pose for joint angles ``q[:5]`` (radians)."""
    pan, lift, elbow, wflex, roll = (float(x) for x in q[:5])
    r_pan = rot_z(-pan)
    # In the arm's vertical plane (x forwards, z up), angles measured from vertical:
    up = lift + UPPER_ARM_TILT  # upper arm
    fore = lift + elbow + math.pi / 2  # forearm
    wrist_dir = fore + wflex  # wrist and gripper
    elbow_pos = (PAN_TO_LIFT[0] + UPPER_ARM * math.sin(up), BASE_TO_LIFT + UPPER_ARM * math.cos(up))
    wrist = np.array(
        [elbow_pos[0] + FOREARM * math.sin(fore), 0.0, elbow_pos[1] + FOREARM * math.cos(fore)]
    )
    hand_rot = r_pan @ rot_y(wrist_dir) @ rot_z(roll)  # hand z = the gripper's pointing axis
    roll_joint = r_pan @ wrist + hand_rot @ np.array([0.0, 0.0, WRIST_TO_ROLL])
    grasp = roll_joint + hand_rot @ np.array([0.0, 0.0, ROLL_TO_GRASP])
    cam_pos = roll_joint + hand_rot @ CAMERA_POS
    mj = hand_rot @ CAMERA_ROT_MUJOCO  # MuJoCo camera: x right, y up, looks along -z
    cv = np.stack([mj[:, 0], -mj[:, 1], -mj[:, 2]], 1)
    return Pose(grasp, hand_rot, cam_pos, cv)


class Unreachable(ValueError):
    pass


def ik_top_down(point: np.ndarray, yaw: float, roll_hint: float = 0.0) -> np.ndarray:
    """Joint angles putting the grasp point at ``point`` with the gripper pointing straight down
    and its closing axis at angle ``yaw`` (radians, world frame; a closing axis is the same
    every 180 degrees, and the roll nearest ``roll_hint`` is chosen). Raises Unreachable."""
    x, y, z = (float(v) for v in point)
    heading = math.atan2(y, x)
    # The wrist_flex joint sits WRIST_TO_GRASP straight above the grasp point.
    a = math.hypot(x, y) - PAN_TO_LIFT[0]
    b = z + WRIST_TO_GRASP - BASE_TO_LIFT
    cos_bend = (a * a + b * b - UPPER_ARM**2 - FOREARM**2) / (2 * UPPER_ARM * FOREARM)
    if not -1.0 <= cos_bend <= 1.0:
        raise Unreachable(f"point {np.round(point, 3).tolist()} is out of reach")
    bend = math.acos(cos_bend)  # forearm angle minus upper-arm angle (elbow above the line)
    up = math.atan2(a, b) - math.atan2(
        FOREARM * math.sin(bend), UPPER_ARM + FOREARM * math.cos(bend)
    )
    fore = up + bend
    lift = up - UPPER_ARM_TILT
    elbow = fore - lift - math.pi / 2
    wflex = math.pi - fore
    # Pointing down, the hand's closing (y) axis lies at angle pi/2 - pan_joint - roll... with
    # pan_joint = -heading: yaw = heading + pi/2 - roll.
    roll = heading + math.pi / 2 - yaw
    roll = roll_hint + (roll - roll_hint + math.pi / 2) % math.pi - math.pi / 2
    q = np.array([-heading, lift, elbow, wflex, roll])
    bad = (q < LIMITS_RAD[:, 0] - 1e-9) | (q > LIMITS_RAD[:, 1] + 1e-9)
    if bad.any():
        names = [JOINT_NAMES[i] for i in np.nonzero(bad)[0]]
        raise Unreachable(f"point {np.round(point, 3).tolist()} needs {names} beyond their limits")
    return q


def reach_top_down(
    xy: np.ndarray,
    z: float,
    yaw: float,
    roll_hint: float = 0.0,
    radius: tuple[float, float] = (0.11, 0.26),
) -> np.ndarray:
    """Top-down IK for an aim that may lie out of reach: the aim is first brought within
    ``radius`` of the base, then pulled towards the base 5 mm at a time until a pose fits (an arm
    told to grasp out of reach grasps at the edge of its reach, and misses)."""
    xy = np.asarray(xy, float)
    r = float(np.hypot(*xy))
    if r < 1e-6:
        xy, r = np.array([radius[0], 0.0]), radius[0]
    r_aim = min(max(r, radius[0]), radius[1])
    for k in range(30):
        scale = max(r_aim - 0.005 * k, radius[0] * 0.5) / r
        try:
            return ik_top_down(np.array([xy[0] * scale, xy[1] * scale, z]), yaw, roll_hint)
        except Unreachable:
            continue
    raise Unreachable(f"no top-down pose near {np.round(xy, 3).tolist()} at z={z:.3f}")


def ik_dls(
    point: np.ndarray,
    q0: np.ndarray,
    iterations: int = 50,
    damping: float = 1e-3,
    tol_m: float = 1e-4,
) -> tuple[np.ndarray, float]:
    """Damped least squares on the grasp point's position only (3 constraints; pan, lift and
    elbow move, wrist_flex and roll keep their values from ``q0``).
    Returns (q, residual distance in metres)."""
    q = np.array(q0[:5], dtype=float)
    err = point - forward(q).grasp
    for _ in range(iterations):
        if np.linalg.norm(err) < tol_m:
            break
        jac = np.zeros((3, 3))
        for j in range(3):
            dq = np.zeros(5)
            dq[j] = 1e-6
            jac[:, j] = (forward(q + dq).grasp - forward(q).grasp) / 1e-6
        step = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(3), err)
        q[:3] = np.clip(q[:3] + step, LIMITS_RAD[:3, 0], LIMITS_RAD[:3, 1])
        err = point - forward(q).grasp
    return q, float(np.linalg.norm(err))
