import pytest

from robot_runtime.collect import record_grasp
from sim import rendering
from sim.kiwi_grasp import KiwiGraspEnv
from sim.outcomes import classify
from sim.perception import EXACT
from sim.scripted import ScriptedGrasp


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"cube_pose": (0.19, 0.0, 0.0)}, "success"),
        ({"cube_pose": (0.19, 0.0, 0.0), "frictionless": True}, "slipped"),
    ],
)
def test_outcomes_are_read_off_the_physics(kwargs, expected):
    episode = record_grasp(KiwiGraspEnv(noise=EXACT, **kwargs), ScriptedGrasp(), seed=0)
    assert classify(episode) == expected


def test_a_cube_out_of_reach_is_missed():
    env = KiwiGraspEnv(noise=EXACT, cube_pose=(0.19, 0.0, 0.0))
    policy = ScriptedGrasp()
    env.reset(seed=0)
    # Move the cube 6 cm sideways after the policy has aimed: the fingers close on nothing.
    episode = record_grasp(env, _AimThenMove(policy, env), seed=0)
    assert classify(episode) == "missed"


class _AimThenMove:
    """Wraps the scripted policy; once it has aimed, the cube is moved away (a test fake)."""

    def __init__(self, policy, env):
        self.policy, self.env = policy, env

    def reset(self):
        self.policy.reset()

    def act(self, obs):
        action = self.policy.act(obs)
        if self.policy.t <= self.policy.dt * 1.5:  # right after the first (aiming) step
            qpos = self.env.unwrapped.data.qpos
            qpos[self.env.unwrapped._cube_qpos + 1] += 0.06
        return action

    @property
    def phase(self):
        return self.policy.phase

    @property
    def done(self):
        return self.policy.done


def test_no_opengl_is_a_clear_error_naming_what_to_install(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    # mujoco is already imported in this process, so no backend can be chosen any more.
    with pytest.raises(rendering.RenderingUnavailable, match="apt-get install"):
        rendering.require_rendering()


def test_backend_is_chosen_from_the_libraries_present(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "mujoco")
    monkeypatch.setattr(
        rendering.ctypes.util,
        "find_library",
        lambda name: "libOSMesa.so" if name == "OSMesa" else None,
    )
    assert rendering.choose_backend() == "osmesa"
    monkeypatch.setattr(rendering.ctypes.util, "find_library", lambda name: None)
    monkeypatch.delenv("MUJOCO_GL")
    assert rendering.choose_backend() is None
