"""Reference perception for the simulated arm: the cube's pose from a wrist-camera image.

Finds the red cube in the image (colour threshold), back-projects the blob's centre to the
cube's top face using the camera pose from the joint state (forward kinematics, not the
simulator), and reads the yaw from the blob's minimum-area bounding box. Optionally adds a
detector's noise on top (sim/perception.py's model: large far away, small up close), so that the
observations have the error profile the world model was trained on. Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.kinematics import forward
from sim.perception import PerceptionNoise, observe, wrap_quarter_deg

WRIST_FOVY_DEG = 75.0  # sim/assets/kiwi_arm.xml
NOMINAL_CUBE_M = 0.03
_ANGLES = np.radians(np.arange(-45.0, 45.0, 1.0))


@dataclass(frozen=True)
class Detection:
    object: np.ndarray  # [x, y, z (m), yaw (deg)] in the wrist-camera frame (OpenCV axes)
    pixels: int  # blob size
    size_m: float  # estimated cube edge


def red_mask(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r > 90) & (r > 2 * g) & (r > 2 * b)


def blob_yaw_deg(us: np.ndarray, vs: np.ndarray) -> float:
    """Angle (mod 90) of the smallest bounding box of the pixels: a square's edges."""
    u, v = us - us.mean(), vs - vs.mean()
    c, s = np.cos(_ANGLES)[:, None], np.sin(_ANGLES)[:, None]
    a = u[None] * c + v[None] * s
    b = -u[None] * s + v[None] * c
    area = (np.ptp(a, axis=1) + 1) * (np.ptp(b, axis=1) + 1)
    return float(np.degrees(_ANGLES[int(np.argmin(area))]))


def detect_cube(
    image: np.ndarray, joints_deg: np.ndarray, fovy_deg: float = WRIST_FOVY_DEG, min_pixels: int = 4
) -> Detection | None:
    """The cube's pose in the wrist-camera frame, or None when no cube is in view."""
    mask = red_mask(image)
    if mask.sum() < min_pixels:
        return None
    # The top face is the brightest red (the side faces, seen at an angle, are in shade): its
    # centre is the cube's centre seen from above, without the bias of the visible sides.
    red = image[..., 0].astype(np.int16)
    top = mask & (red >= 0.85 * red[mask].max())
    vs, us = np.nonzero(top if top.sum() >= min_pixels else mask)
    h, w = mask.shape
    f = (h / 2) / math.tan(math.radians(fovy_deg) / 2)
    pose = forward(np.radians(np.asarray(joints_deg[:5], float)))
    # Ray through the blob centre (pixel centres at +0.5), camera frame: x right, y down, z ahead.
    ray_cam = np.array([(us.mean() + 0.5 - w / 2) / f, (vs.mean() + 0.5 - h / 2) / f, 1.0])
    ray_world = pose.camera_rot @ ray_cam
    if ray_world[2] >= -1e-6:
        return None  # looking up: not at the table
    size = NOMINAL_CUBE_M
    for _ in range(3):  # the top face lies at z = size; refine size from the blob's extent
        t = (size - pose.camera_pos[2]) / ray_world[2]
        depth = t  # z in the camera frame (ray_cam has z = 1)
        size = float(np.clip(math.sqrt(len(us)) * depth / f, 0.015, 0.05))
    top = pose.camera_pos + t * ray_world
    center_world = top - np.array([0.0, 0.0, size / 2])
    rel = pose.camera_rot.T @ (center_world - pose.camera_pos)
    yaw = wrap_quarter_deg(blob_yaw_deg(us.astype(float), vs.astype(float)))
    return Detection(np.array([rel[0], rel[1], rel[2], yaw]), len(us), size)


class CubePerception:
    """Image -> observation for the world model, with the configured detector noise."""

    def __init__(self, noise: PerceptionNoise | None = None, seed: int = 0):
        self.noise = noise if noise is not None else PerceptionNoise()
        self.rng = np.random.default_rng(seed)
        self.misses = 0

    def __call__(self, image: np.ndarray, joints_deg: np.ndarray) -> np.ndarray | None:
        found = detect_cube(image, joints_deg)
        if found is None:
            self.misses += 1
            return None
        return observe(found.object, self.noise, self.rng).astype(np.float32)
