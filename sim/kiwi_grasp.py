"""``kiwi/Grasp-v0``: the simulated Kiwi arm picking up a cube (MuJoCo, gymnasium API).

Action ``[6]`` float32 in LeRobot's units: five joint position targets in degrees
(shoulder_pan, shoulder_lift, elbow_flex, wrist_flex, wrist_roll) and the gripper opening in
0..100 (0 closed, 100 open). Control runs at 50 Hz, 10 physics steps of 2 ms each.

Observation dict:
- ``state`` [6]: joint positions in the same units;
- ``object`` [4]: the cube's position (x, y, z metres) and yaw (degrees, in [-45, 45)) in the
  wrist-camera frame (OpenCV axes), as a perception module reports it: noisy, noise drawn afresh
  every frame and shrinking as the camera nears the cube (sim/perception.py);
- optional images, ``front`` and ``wrist`` ``[H, W, 3]`` uint8, when asked for.

``info`` carries the ground truth: ``cube_pos``, ``cube_yaw_deg``, ``cube_size_m``,
``finger_contacts`` (left, right), ``lifted_m``, ``is_success`` (cube lifted >= 5 cm and held by
both fingers for >= 0.5 s).

Domain randomisation per episode (cube position within reach, yaw, size, mass, friction) comes
from the env's seeded generator: the same seed gives the same episode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import gymnasium
import numpy as np
from gymnasium import spaces

from .kinematics import JOINT_NAMES, LIMITS_RAD, forward
from .perception import PerceptionNoise, cube_in_camera, observe
from .rendering import choose_backend

choose_backend()
import mujoco  # noqa: E402  (after choosing the OpenGL backend)

CONTROL_HZ = 50
SUBSTEPS = 10
FINGER_MAX_M = 0.035
LIFT_SUCCESS_M = 0.05
HOLD_SUCCESS_S = 0.5
# Home: arm folded back, wrist camera looking down at the workspace from 0.2-0.27 m away.
HOME_JOINTS_RAD = np.array([0.0, -1.25, 0.5, 1.55, 0.0])
DEG_LIMITS = np.degrees(LIMITS_RAD)
ACTION_LOW = np.append(DEG_LIMITS[:, 0], 0.0).astype(np.float32)
ACTION_HIGH = np.append(DEG_LIMITS[:, 1], 100.0).astype(np.float32)
# ``object``: x, y, z (m) and yaw (degrees) in the camera frame. Each column has its own bound:
# clipping with one scalar low once turned every negative yaw into -1 degree.
OBJECT_BOUNDS = (
    np.array([-1.0, -1.0, -1.0, -45.0], np.float32),
    np.array([1.0, 1.0, 1.0, 45.0], np.float32),
)


@dataclass(frozen=True)
class Randomization:
    """Ranges of the per-episode domain randomisation."""

    radius_m: tuple[float, float] = (0.15, 0.24)  # cube distance from the base axis
    bearing_deg: tuple[float, float] = (-35.0, 35.0)
    yaw_deg: tuple[float, float] = (-45.0, 45.0)
    size_m: tuple[float, float] = (0.024, 0.036)  # edge length
    mass_kg: tuple[float, float] = (0.010, 0.100)
    friction: tuple[float, float] = (0.5, 1.2)


class KiwiGraspEnv(gymnasium.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        cameras: tuple[str, ...] = (),
        image_size: int = 64,
        noise: PerceptionNoise | None = None,
        randomization: Randomization | None = None,
        frictionless: bool = False,
        render_mode: str | None = None,
        render_size: tuple[int, int] = (240, 320),
        cube_pose: tuple | None = None,
    ):
        """``cube_pose`` = (x, y, yaw_deg) fixes the placement (tests, demonstrations);
        ``frictionless`` makes finger and cube contacts frictionless (condim 1)."""
        unknown = set(cameras) - {"front", "wrist"}
        if unknown:
            raise ValueError(f"unknown cameras {sorted(unknown)}; choose from front, wrist")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.cameras, self.image_size = tuple(cameras), int(image_size)
        self.noise = noise if noise is not None else PerceptionNoise()
        self.randomization = randomization or Randomization()
        self.render_mode, self.render_size = render_mode, render_size
        self.fixed_cube_pose = cube_pose
        xml = resources.files("sim").joinpath("assets/kiwi_arm.xml").read_text()
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._arm_qpos = np.array([m.joint(n).qposadr[0] for n in JOINT_NAMES])
        self._arm_dof = np.array([m.joint(n).dofadr[0] for n in JOINT_NAMES])
        self._finger_qpos = np.array(
            [m.joint(n).qposadr[0] for n in ("finger_left", "finger_right")]
        )
        self._finger_dof = np.array([m.joint(n).dofadr[0] for n in ("finger_left", "finger_right")])
        self._cube_qpos = m.joint("cube").qposadr[0]
        self._cube_dof = m.joint("cube").dofadr[0]
        self._cube_body = m.body("cube").id
        self._cube_geom = m.geom("cube").id
        self._fingers = (m.geom("finger_left").id, m.geom("finger_right").id)
        self._grasp_site = m.site("grasp").id
        if frictionless:
            for g in (self._cube_geom, *self._fingers):
                m.geom_condim[g] = 1
        self.action_space = spaces.Box(ACTION_LOW, ACTION_HIGH, dtype=np.float32)
        obs_spaces = {
            "state": spaces.Box(ACTION_LOW, ACTION_HIGH, dtype=np.float32),
            "object": spaces.Box(*OBJECT_BOUNDS, dtype=np.float32),
        }
        for cam in self.cameras:
            obs_spaces[cam] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self._renderers: dict[tuple[int, int], object] = {}
        self._held_steps = 0
        self._success = False
        self._cube_z0 = 0.0
        self.episode_params: dict[str, float] = {}

    # --- episode ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        m, d, r = self.model, self.data, self.randomization
        mujoco.mj_resetData(m, d)
        if self.fixed_cube_pose is not None:
            x, y, yaw_deg = self.fixed_cube_pose
        else:
            radius, bearing = rng.uniform(*r.radius_m), math.radians(rng.uniform(*r.bearing_deg))
            x, y, yaw_deg = (
                radius * math.cos(bearing),
                radius * math.sin(bearing),
                rng.uniform(*r.yaw_deg),
            )
        size, mass, friction = (
            rng.uniform(*r.size_m),
            rng.uniform(*r.mass_kg),
            rng.uniform(*r.friction),
        )
        half = size / 2
        m.geom_size[self._cube_geom] = (half, half, half)
        m.body_mass[self._cube_body] = mass
        m.body_inertia[self._cube_body] = mass * size**2 / 6.0
        m.geom_friction[self._cube_geom, 0] = friction
        yaw = math.radians(yaw_deg)
        d.qpos[self._cube_qpos : self._cube_qpos + 7] = (
            x,
            y,
            half,
            math.cos(yaw / 2),
            0,
            0,
            math.sin(yaw / 2),
        )
        home = HOME_JOINTS_RAD
        d.qpos[self._arm_qpos] = home
        d.qpos[self._finger_qpos] = FINGER_MAX_M
        d.ctrl[:5] = home
        d.ctrl[5:7] = FINGER_MAX_M
        mujoco.mj_forward(m, d)
        self._held_steps, self._success, self._cube_z0 = 0, False, half
        self.episode_params = {
            "cube_x": x,
            "cube_y": y,
            "cube_yaw_deg": yaw_deg,
            "cube_size_m": size,
            "cube_mass_kg": mass,
            "cube_friction": friction,
        }
        return self._observation(), self._info()

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (6,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be 6 finite numbers, got {action!r}")
        action = np.clip(action, ACTION_LOW, ACTION_HIGH)
        d = self.data
        d.ctrl[:5] = np.radians(action[:5])
        d.ctrl[5:7] = action[5] / 100.0 * FINGER_MAX_M
        mujoco.mj_step(self.model, d, nstep=SUBSTEPS)
        contacts = self._finger_contacts()
        lifted = self._cube_pos()[2] - self._cube_z0
        held = lifted >= LIFT_SUCCESS_M and all(contacts)
        self._held_steps = self._held_steps + 1 if held else 0
        self._success = self._success or self._held_steps >= HOLD_SUCCESS_S * CONTROL_HZ
        reward = 1.0 if held else 0.0
        return self._observation(), reward, False, False, self._info(contacts, lifted)

    # --- what the robot sees --------------------------------------------------------------
    def joint_state(self) -> np.ndarray:
        d = self.data
        grip = d.qpos[self._finger_qpos].mean() / FINGER_MAX_M * 100.0
        state = np.append(np.degrees(d.qpos[self._arm_qpos]), grip)
        return np.clip(state, ACTION_LOW, ACTION_HIGH).astype(np.float32)  # soft limits overshoot

    def true_object(self) -> np.ndarray:
        """The cube's pose in the wrist-camera frame, without noise."""
        pose = forward(self.data.qpos[self._arm_qpos])
        return cube_in_camera(self._cube_pos(), self._cube_rot(), pose.camera_pos, pose.camera_rot)

    def _observation(self) -> dict[str, np.ndarray]:
        obj = observe(self.true_object(), self.noise, self.np_random)
        obs = {
            "state": self.joint_state(),
            "object": np.clip(obj, *OBJECT_BOUNDS).astype(np.float32),
        }
        for cam in self.cameras:
            obs[cam] = self.render_camera(cam, self.image_size, self.image_size)
        return obs

    def render_camera(self, camera: str, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._renderers:
            from .rendering import make_renderer

            self._renderers[key] = make_renderer(self.model, height, width)
        renderer = self._renderers[key]
        renderer.update_scene(self.data, camera=camera)
        return renderer.render().copy()

    def render(self):
        if self.render_mode == "rgb_array":
            return self.render_camera("front", *self.render_size)
        return None

    # --- what-if --------------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        """Everything a step changes (the physics state, the success bookkeeping, the noise
        generator), for ``restore``: evaluations play a future out and come back."""
        state = np.empty(mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(self.model, self.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        return (state, self._held_steps, self._success, self.np_random.bit_generator.state)

    def restore(self, snapshot: tuple) -> None:
        state, self._held_steps, self._success, rng_state = snapshot
        mujoco.mj_setState(self.model, self.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(self.model, self.data)
        self.np_random.bit_generator.state = rng_state

    # --- ground truth -----------------------------------------------------------------------
    def _cube_pos(self) -> np.ndarray:
        return self.data.xpos[self._cube_body].copy()

    def _cube_rot(self) -> np.ndarray:
        return self.data.xmat[self._cube_body].reshape(3, 3).copy()

    def _finger_contacts(self) -> tuple[bool, bool]:
        touching = [False, False]
        d = self.data
        for i in range(d.ncon):
            c = d.contact[i]
            pair = (c.geom1, c.geom2)
            if self._cube_geom in pair:
                for k, finger in enumerate(self._fingers):
                    if finger in pair:
                        touching[k] = True
        return touching[0], touching[1]

    def _info(self, contacts: tuple[bool, bool] | None = None, lifted: float | None = None) -> dict:
        pos = self._cube_pos()
        rot = self._cube_rot()
        yaw = math.degrees(math.atan2(rot[1, 0], rot[0, 0]))
        contacts = contacts if contacts is not None else self._finger_contacts()
        return {
            "cube_pos": pos,
            "cube_yaw_deg": (yaw + 45.0) % 90.0 - 45.0,
            "cube_size_m": float(self.model.geom_size[self._cube_geom, 0] * 2),
            "finger_contacts": np.array(contacts),
            "lifted_m": float(pos[2] - self._cube_z0 if lifted is None else lifted),
            "grasp_pos": self.data.site_xpos[self._grasp_site].copy(),
            "is_success": bool(self._success),
        }

    def close(self):
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
