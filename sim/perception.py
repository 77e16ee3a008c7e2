"""A stand-in for a perception module: the cube's pose in the wrist-camera frame, with noise like
a real detector's (fresh every frame, smaller as the camera nears the cube). Pure numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PerceptionNoise:
    """Standard deviations at ``far_m`` and below ``near_m`` camera-to-cube distance, linear
    between. Defaults: ~16 mm and 25 degrees from the home pose, ~3 mm and 3 degrees at
    pre-grasp height (../shared/notes/sim.md: that is where a forecast becomes worth acting on)."""

    pos_far_m: float = 0.016
    pos_near_m: float = 0.003
    yaw_far_deg: float = 25.0
    yaw_near_deg: float = 3.0
    near_m: float = 0.14
    far_m: float = 0.20

    def sigmas(self, distance_m: float) -> tuple[float, float]:
        """(position sigma in metres, yaw sigma in degrees) at this distance."""
        w = min(max((distance_m - self.near_m) / (self.far_m - self.near_m), 0.0), 1.0)
        return (
            self.pos_near_m + w * (self.pos_far_m - self.pos_near_m),
            self.yaw_near_deg + w * (self.yaw_far_deg - self.yaw_near_deg),
        )


EXACT = PerceptionNoise(0.0, 0.0, 0.0, 0.0)


def wrap_quarter_deg(angle_deg: float) -> float:
    """A cube looks the same every 90 degrees: map to [-45, 45)."""
    return (angle_deg + 45.0) % 90.0 - 45.0


def cube_in_camera(
    cube_pos: np.ndarray, cube_rot: np.ndarray, cam_pos: np.ndarray, cam_rot: np.ndarray
) -> np.ndarray:
    """True ``[x, y, z (m), yaw (deg)]`` of the cube in the camera frame (OpenCV axes: x right,
    y down, z forward). Yaw is the angle of the cube's x edge about the optical axis."""
    rel = cam_rot.T @ (cube_pos - cam_pos)
    edge = cam_rot.T @ cube_rot[:, 0]
    yaw = wrap_quarter_deg(math.degrees(math.atan2(edge[1], edge[0])))
    return np.array([rel[0], rel[1], rel[2], yaw])


def observe(true_cam: np.ndarray, noise: PerceptionNoise, rng: np.random.Generator) -> np.ndarray:
    """One noisy detection of ``cube_in_camera``'s output."""
    pos_sigma, yaw_sigma = noise.sigmas(float(np.linalg.norm(true_cam[:3])))
    out = true_cam.copy()
    out[:3] += rng.normal(0.0, pos_sigma, 3) if pos_sigma > 0 else 0.0
    if yaw_sigma > 0:
        out[3] = wrap_quarter_deg(out[3] + rng.normal(0.0, yaw_sigma))
    return out


def camera_to_world(
    obs_cam: np.ndarray, cam_pos: np.ndarray, cam_rot: np.ndarray
) -> tuple[np.ndarray, float]:
    """Inverse of ``cube_in_camera`` for a top-down view: (cube position in the world, yaw of the
    cube's edge about the world z axis in radians, modulo 90 degrees)."""
    pos = cam_pos + cam_rot @ obs_cam[:3]
    yaw_cam = math.radians(obs_cam[3])
    edge_world = cam_rot @ np.array([math.cos(yaw_cam), math.sin(yaw_cam), 0.0])
    yaw = math.atan2(edge_world[1], edge_world[0])
    return pos, math.radians(wrap_quarter_deg(math.degrees(yaw)))
