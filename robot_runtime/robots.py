"""Which real arm `kiwi run` drives: the config's ``robot:`` section with the command line's
overrides, and the calibration file, found where LeRobot keeps it when none is named.

LeRobot stores a follower's calibration at
``$HF_LEROBOT_CALIBRATION/robots/<type>_follower/<id>.json``, where ``HF_LEROBOT_CALIBRATION``
defaults to ``$HF_LEROBOT_HOME/calibration`` and that to ``~/.cache/huggingface/lerobot``. Pure
apart from reading the environment and checking that files exist.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, RobotSection


@dataclass(frozen=True)
class RobotChoice:
    type: str  # so100, so101, koch
    port: str
    calibration: Path


def lerobot_calibration_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("HF_LEROBOT_CALIBRATION"):
        return Path(env["HF_LEROBOT_CALIBRATION"]).expanduser()
    home = env.get("HF_LEROBOT_HOME") or str(Path("~/.cache/huggingface/lerobot"))
    return Path(home).expanduser() / "calibration"


def lerobot_calibration_path(
    robot_type: str, robot_id: str, env: Mapping[str, str] | None = None
) -> Path:
    return lerobot_calibration_dir(env) / "robots" / f"{robot_type}_follower" / f"{robot_id}.json"


def choose_robot(
    section: RobotSection,
    robot: str | None = None,
    port: str | None = None,
    calibration: str | None = None,
    env: Mapping[str, str] | None = None,
) -> RobotChoice:
    """The arm to drive; a clear error naming what is missing and where it looked."""
    robot_type = robot or section.type
    if robot_type is None:
        raise ConfigError("which arm? pass --robot so100|so101|koch or use configs/<robot>.yaml")
    port = port or section.port
    if not port:
        raise ConfigError(
            f"which port is the {robot_type} on? pass --port (list them with `kiwi scan`)"
        )
    named = calibration or section.calibration
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"calibration file {path} does not exist")
        return RobotChoice(robot_type, port, path)
    path = lerobot_calibration_path(robot_type, section.id, env)
    if not path.is_file():
        raise ConfigError(
            f"no calibration for the {robot_type}: pass --calibration FILE, or make one with "
            f"`kiwi calibrate --robot {robot_type} --port {port} --out {robot_type}.json` "
            f"(LeRobot's file for robot id {section.id!r} would be {path}: not there)"
        )
    return RobotChoice(robot_type, port, path)


def check_joints(section: RobotSection, joint_names: tuple[str, ...]) -> None:
    if section.joints and tuple(section.joints) != tuple(joint_names):
        raise ConfigError(
            f"robot.joints {list(section.joints)} differ from the {section.type} driver's "
            f"{list(joint_names)}"
        )
