"""Arms behind one interface (DESIGN.md): the SO-100/SO-101 and Koch followers on servo buses.

Joint positions are degrees (gripper 0..100), LeRobot's units, ordered as ``joint_names``.
``connect`` checks every servo answers with the right model, checks the calibration's values fit
the servos' registers, writes its homing offsets and limits where the servos differ from it
(torque off, as EEPROM needs), applies the arm's servo settings and enables torque.
``disconnect`` turns torque off unless told to hold.

Every failure of ``read_joints`` and ``write_targets`` on the bus (after the bus's retries) is a
``drivers.errors.BusError``; ``write_targets`` raises ValueError for targets that are not finite.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from . import calibration as cal
from .bus import BusSettings, MotorBus
from .errors import BusError
from .tables import MODELS

CONNECT_RETRIES = 5  # per transaction while connecting
LEROBOT_JOINTS = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)


class Arm(Protocol):
    joint_names: tuple[str, ...]

    def connect(self) -> None: ...

    def read_joints(self) -> np.ndarray: ...

    def write_targets(self, targets: np.ndarray) -> None: ...

    def disconnect(self, torque_off: bool = True) -> None: ...

    @property
    def limits(self) -> np.ndarray: ...  # [n, 2] in joint units


@dataclass(frozen=True)
class Motor:
    name: str
    id: int
    model: str
    mode: str  # calibration.DEGREES or calibration.RANGE_0_100


@dataclass(frozen=True)
class ArmConfig:
    name: str
    protocol: str
    motors: tuple[Motor, ...]
    settings: tuple[tuple[str, str, int], ...]  # (motor name or "*", register, value) at connect
    # Joints that turn freely: calibrated 0..4095 without recording a range (LeRobot's choice).
    full_turn: tuple[str, ...] = ("wrist_roll",)


def _motors(models: tuple[str, ...]) -> tuple[Motor, ...]:
    return tuple(
        Motor(name, i + 1, model, cal.RANGE_0_100 if name == "gripper" else cal.DEGREES)
        for i, (name, model) in enumerate(zip(LEROBOT_JOINTS, models))
    )


# Servo settings as LeRobot's followers apply them (see ../shared/notes/robots.md).
SO100 = ArmConfig(
    "so100",
    "feetech",
    _motors(("sts3215",) * 6),
    (
        ("*", "Return_Delay_Time", 0),
        ("*", "Maximum_Acceleration", 254),
        ("*", "Acceleration", 254),
        ("*", "P_Coefficient", 16),
        ("*", "I_Coefficient", 0),
        ("*", "D_Coefficient", 32),
        ("gripper", "Max_Torque_Limit", 500),
        ("gripper", "Protection_Current", 250),
        ("gripper", "Overload_Torque", 25),
    ),
)
KOCH = ArmConfig(
    "koch",
    "dynamixel",
    _motors(("xl430-w250", "xl430-w250") + ("xl330-m288",) * 4),
    (
        ("*", "Return_Delay_Time", 0),
        ("*", "Operating_Mode", 4),  # extended position
        ("gripper", "Operating_Mode", 5),  # current-based position: grips without burning out
        ("elbow_flex", "Position_P_Gain", 1500),
        ("elbow_flex", "Position_I_Gain", 0),
        ("elbow_flex", "Position_D_Gain", 600),
    ),
    full_turn=("shoulder_pan", "wrist_roll"),
)
SO101 = replace(SO100, name="so101")  # same servos and ids; named as itself everywhere
ARMS = {"so100": SO100, "so101": SO101, "koch": KOCH}
MULTI_TURN_BIT = 0x10  # STS3215 Phase register (LeRobot PR #3373)


def check_servos(bus: MotorBus, config: ArmConfig) -> None:
    """Raises BusError (one line naming each motor that is silent or of another model) unless
    every motor of ``config`` answers a ping on the open ``bus`` with its model number."""
    problems, silent = [], []
    for m in config.motors:
        expected = MODELS[m.model].model_number
        try:
            number = bus.ping(m.id)
        except BusError as e:
            problems.append(f"{m.name} (id {m.id}): no answer ({e.__class__.__name__})")
            silent.append(m.id)
            continue
        if number != expected:
            problems.append(
                f"{m.name} (id {m.id}): model number {number}, expected {expected} ({m.model})"
            )
    if len(silent) == len(config.motors) > 1:
        problems = [f"none of its servos (ids {', '.join(map(str, silent))}) answered"]
    if problems:
        raise BusError(
            f"{config.name} on {bus.port_name} ({config.protocol}, "
            f"{bus.settings.baudrate} baud): "
            + "; ".join(problems)
            + f" (check power, ids and baud rate with `kiwi scan --port {bus.port_name}`)"
        )


class ServoArm:
    """An arm on a servo bus: ``ServoArm(SO100, "/dev/ttyACM0", "so100.json")``."""

    def __init__(
        self,
        config: ArmConfig,
        port,
        calibration: Path | dict[str, cal.MotorCalibration],
        settings: BusSettings | None = None,
    ):
        self.config = config
        self.joint_names = tuple(m.name for m in config.motors)
        self._expected = {m.name: m.id for m in config.motors}
        self._model = {m.name: MODELS[m.model] for m in config.motors}
        if isinstance(calibration, dict):
            self.calibration, self._cal_source = calibration, f"{config.name} calibration"
        else:
            self._cal_source = str(calibration)
            self.calibration = cal.load(Path(calibration), self._expected, self._model)
        self.bus = MotorBus(port, config.protocol, settings)
        self._ids = [m.id for m in config.motors]
        self._reg = lambda name: self._model[config.motors[0].name].register(name)
        cal.validate(self.calibration, self._cal_source, self._expected, self._model)
        self._cal = [self.calibration[m.name] for m in config.motors]
        self.connected = False

    @property
    def limits(self) -> np.ndarray:
        return np.array(
            [
                cal.limits(c, m.mode, self._model[m.name].resolution)
                for c, m in zip(self._cal, self.config.motors)
            ]
        )

    def connect(self) -> None:
        # again here, as the values in self.calibration may have been changed since
        cal.validate(self.calibration, self._cal_source, self._expected, self._model)
        self._cal = [self.calibration[m.name] for m in self.config.motors]
        self.bus.open()
        # Setting up is not time-critical: a reply lost then is asked for again more often than
        # in the loop (LeRobot's calibration uses five retries too).
        loop_settings = self.bus.settings
        self.bus.settings = replace(
            loop_settings, retries=max(loop_settings.retries, CONNECT_RETRIES)
        )
        try:
            self._check_servos()
            self._torque(False)  # EEPROM (offsets, limits, modes) is writable only with torque off
            self._single_turn()
            self._write_calibration()
            self._apply_settings()
            self._torque(True)
        except BaseException:
            self.bus.close()
            raise
        finally:
            self.bus.settings = loop_settings
        self.connected = True

    def _check_servos(self) -> None:
        check_servos(self.bus, self.config)

    def _single_turn(self) -> None:
        """Feetech: clears Phase bit 4 (multi-turn feedback), as LeRobot does, so positions stay
        within 0..4095: the calibration's ranges, and the bus's check of replies, expect it."""
        if self.config.protocol != "feetech":
            return
        for m in self.config.motors:
            reg = self._model[m.name].register("Phase")
            phase = self.bus.read(m.id, reg)
            if phase & MULTI_TURN_BIT:
                self.bus.write(m.id, reg, phase & ~MULTI_TURN_BIT)

    def _write_calibration(self) -> None:
        for m, c in zip(self.config.motors, self._cal):
            model = self._model[m.name]
            for reg_name, value in (
                ("Homing_Offset", c.homing_offset),
                ("Min_Position_Limit", c.range_min),
                ("Max_Position_Limit", c.range_max),
            ):
                reg = model.register(reg_name)
                if self.bus.read(m.id, reg) != value:
                    self.bus.write(m.id, reg, value)

    def _apply_settings(self) -> None:
        for target, reg_name, value in self.config.settings:
            for m in self.config.motors:
                if target in ("*", m.name):
                    reg = self._model[m.name].register(reg_name)
                    self.bus.write(m.id, reg, value)

    def _torque(self, on: bool) -> None:
        self.bus.sync_write(self._reg("Torque_Enable"), dict.fromkeys(self._ids, int(on)))
        if self.config.protocol == "feetech":
            self.bus.sync_write(self._reg("Lock"), dict.fromkeys(self._ids, int(on)))

    def read_joints(self) -> np.ndarray:
        ticks = self.bus.sync_read(self._reg("Present_Position"), self._ids)
        return np.array(
            [
                cal.to_units(ticks[m.id], c, m.mode, self._model[m.name].resolution)
                for m, c in zip(self.config.motors, self._cal)
            ]
        )

    def write_targets(self, targets: np.ndarray) -> None:
        """Goal positions in joint units, clamped to the calibrated range, in one sync write."""
        targets = np.asarray(targets, dtype=float)
        if targets.shape != (len(self._ids),) or not np.all(np.isfinite(targets)):
            raise ValueError(f"targets must be {len(self._ids)} finite numbers, got {targets!r}")
        goal = {
            m.id: cal.to_ticks(v, c, m.mode, self._model[m.name].resolution)
            for m, c, v in zip(self.config.motors, self._cal, targets)
        }
        self.bus.sync_write(self._reg("Goal_Position"), goal)

    def disconnect(self, torque_off: bool = True) -> None:
        """Torque off (unless told to hold), then close the port; safe to call twice."""
        if self.bus.serial is None:
            return
        try:
            if torque_off:
                self._torque(False)
        finally:
            self.bus.close()
            self.connected = False

    def __enter__(self) -> ServoArm:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
