"""Real-arm configs (configs/so100.yaml, so101.yaml, koch.yaml) and where the calibration comes
from: the command line, the config, or LeRobot's own file for the robot id."""

from __future__ import annotations

import pytest

from drivers.arm import ARMS
from robot_runtime.config import ConfigError, GraspJob, load_config
from robot_runtime.robots import (
    check_joints,
    choose_robot,
    lerobot_calibration_dir,
    lerobot_calibration_path,
)


@pytest.mark.parametrize("robot", ["so100", "so101", "koch"])
def test_each_arm_has_a_config_that_extends_the_grasp_job(robot):
    job, _ = load_config(robot, GraspJob)
    assert job.robot.type == robot and job.robot.port
    base, _ = load_config("sim_grasp", GraspJob)
    assert job.model == base.model and job.runtime.checkpoint == base.runtime.checkpoint
    check_joints(job.robot, tuple(m.name for m in ARMS[robot].motors))


def test_lerobot_calibration_location_follows_its_environment_variables(tmp_path):
    assert str(lerobot_calibration_dir({})).endswith(".cache/huggingface/lerobot/calibration")
    assert lerobot_calibration_dir({"HF_LEROBOT_HOME": str(tmp_path)}) == tmp_path / "calibration"
    assert lerobot_calibration_dir({"HF_LEROBOT_CALIBRATION": str(tmp_path)}) == tmp_path
    path = lerobot_calibration_path("so101", "arm7", {"HF_LEROBOT_CALIBRATION": str(tmp_path)})
    assert path == tmp_path / "robots" / "so101_follower" / "arm7.json"


def test_the_calibration_is_found_or_its_absence_explained(tmp_path):
    job, _ = load_config("so101", GraspJob, ["robot.id=arm7"])
    env = {"HF_LEROBOT_CALIBRATION": str(tmp_path)}
    with pytest.raises(ConfigError, match="no calibration for the so101.*kiwi calibrate"):
        choose_robot(job.robot, env=env)
    lerobot_file = lerobot_calibration_path("so101", "arm7", env)
    lerobot_file.parent.mkdir(parents=True)
    lerobot_file.write_text("{}")
    choice = choose_robot(job.robot, env=env)
    assert choice.calibration == lerobot_file and choice.port == "/dev/ttyACM0"
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    choice = choose_robot(job.robot, port="/dev/ttyUSB3", calibration=str(mine), env=env)
    assert choice.calibration == mine and choice.port == "/dev/ttyUSB3"
    with pytest.raises(ConfigError, match="does not exist"):
        choose_robot(job.robot, calibration=str(tmp_path / "nope.json"), env=env)


def test_a_config_without_a_robot_asks_for_one():
    job, _ = load_config("sim_grasp", GraspJob)
    with pytest.raises(ConfigError, match="pass --robot"):
        choose_robot(job.robot)
    with pytest.raises(ConfigError, match="pass --port"):
        choose_robot(job.robot, robot="koch")


def test_joint_names_that_differ_from_the_driver_are_refused():
    job, _ = load_config("so101", GraspJob, ["robot.joints=[a, b]"])
    with pytest.raises(ConfigError, match="differ from the so101 driver"):
        check_joints(job.robot, tuple(m.name for m in ARMS["so101"].motors))


def test_a_base_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="nest more than 4 deep"):
        load_config(tmp_path / "a.yaml", GraspJob)
