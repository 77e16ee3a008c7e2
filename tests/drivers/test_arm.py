"""ServoArm (SO-100 on Feetech, Koch on Dynamixel) against emulated servos on a pty: connect
writes the calibration, targets in degrees move the joints, limits clamp, disconnect unpowers."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from drivers.arm import ARMS as ARMS_BY_NAME
from drivers.arm import KOCH, SO100, ArmConfig, ServoArm
from drivers.bus import BusSettings
from drivers.calibration import CalibrationError
from drivers.errors import BusError
from drivers.virtual_bus import Faults, VirtualBus

from .support import wait_until

SETTINGS = BusSettings(timeout_s=0.5, retries=2)
MISSING = BusSettings(timeout_s=0.02, retries=2)  # absent servos cost 3 timeouts each
TICKS_PER_DEG = 4095 / 360
# Raw (pre-offset) positions the emulated motors start at, one per joint.
RAW = [2147, 1847, 2347, 1647, 2047, 2200]
RANGES = {  # present ticks; joints centred on 2047 so that the start reads as 0 degrees
    "shoulder_pan": (1047, 3047),
    "shoulder_lift": (1047, 3047),
    "elbow_flex": (1047, 3047),
    "wrist_flex": (1047, 3047),
    "wrist_roll": (0, 4095),
    "gripper": (2000, 2600),
}
REVERSED = {"elbow_flex"}  # drive_mode 1


def homing_offset(protocol: str, raw: int) -> int:
    """What makes ``raw`` read as 2047 (Feetech: present = raw - offset; Dynamixel: + offset)."""
    return raw - 2047 if protocol == "feetech" else 2047 - raw


def lerobot_calibration(config: ArmConfig) -> dict:
    return {
        m.name: {
            "id": m.id,
            "drive_mode": int(m.name in REVERSED),
            "homing_offset": homing_offset(config.protocol, raw),
            "range_min": RANGES[m.name][0],
            "range_max": RANGES[m.name][1],
        }
        for m, raw in zip(config.motors, RAW)
    }


@pytest.fixture
def arm_on_emulator(make_virtual_bus, tmp_path):
    """``arm_on_emulator(config)`` -> (ServoArm, VirtualBus, calibration dict), not connected."""
    arms = []

    def make(config: ArmConfig):
        virtual = make_virtual_bus(config.protocol, {m.id: m.model for m in config.motors})
        for m, raw in zip(config.motors, RAW):
            servo = virtual.servo(m.id)
            servo.actual = servo.goal = float(raw)
        calibration = lerobot_calibration(config)
        path = tmp_path / f"{config.name}.json"
        path.write_text(json.dumps(calibration, indent=4))
        arm = ServoArm(config, virtual.port, path, SETTINGS)
        arms.append(arm)
        return arm, virtual, calibration

    yield make
    for arm in arms:
        arm.disconnect()


def torques(virtual, config: ArmConfig) -> list[bool]:
    return [virtual.servo(m.id).torque for m in config.motors]


def wait_for_torque(virtual, config: ArmConfig, on: bool, timeout_s: float = 1.0) -> bool:
    """Torque is set by a sync write, which has no reply: the emulator applies it shortly."""
    return wait_until(lambda: torques(virtual, config) == [on] * len(config.motors), timeout_s)


def settle(arm: ServoArm, expected, tolerance: float = 0.2, timeout_s: float = 3.0) -> np.ndarray:
    """Polls read_joints until every joint is within ``tolerance`` of ``expected``."""
    expected = np.asarray(expected, dtype=float)
    last = {}

    def arrived():
        last["joints"] = arm.read_joints()
        return bool(np.all(np.abs(last["joints"] - expected) < tolerance))

    wait_until(arrived, timeout_s)
    return last["joints"]


ARMS = pytest.mark.parametrize("config", [SO100, KOCH], ids=["so100", "koch"])


@ARMS
def test_connect_writes_calibration_and_settings_then_enables_torque(config, arm_on_emulator):
    arm, virtual, calibration = arm_on_emulator(config)
    assert not any(virtual.servo(m.id).torque for m in config.motors)
    arm.connect()
    assert arm.connected
    assert wait_for_torque(virtual, config, True)
    for m in config.motors:
        servo, cal = virtual.servo(m.id), calibration[m.name]
        assert servo.get("Homing_Offset") == cal["homing_offset"], m.name
        assert servo.get("Min_Position_Limit") == cal["range_min"], m.name
        assert servo.get("Max_Position_Limit") == cal["range_max"], m.name
    ids = {m.name: m.id for m in config.motors}
    servo = lambda name: virtual.servo(ids[name])
    if config.protocol == "feetech":
        assert wait_until(lambda: all(virtual.servo(i).get("Lock") == 1 for i in ids.values()))
        assert servo("elbow_flex").get("P_Coefficient") == 16
        assert servo("gripper").get("Max_Torque_Limit") == 500
        assert servo("shoulder_pan").get("Max_Torque_Limit") == 1000  # untouched
    else:
        assert servo("shoulder_pan").get("Operating_Mode") == 4
        assert servo("gripper").get("Operating_Mode") == 5
        assert servo("elbow_flex").get("Position_P_Gain") == 1500
        assert servo("wrist_flex").get("Position_P_Gain") == 800  # untouched
    # every joint starts at present 2047: mid-range is 0 degrees
    start = arm.read_joints()
    wrist_roll = (2047 - 2047.5) * 360 / 4095
    gripper = (2047 - 2000) / 600 * 100
    np.testing.assert_allclose(start, [0, 0, 0, 0, wrist_roll, gripper], atol=1e-9)


@ARMS
def test_targets_in_degrees_are_followed(config, arm_on_emulator):
    arm, virtual, _ = arm_on_emulator(config)
    arm.connect()
    targets = np.array([10.0, -20.0, 30.0, -40.0, 45.0, 50.0])
    arm.write_targets(targets)
    joints = settle(arm, targets)
    np.testing.assert_allclose(joints, targets, atol=0.2)  # by then the goals are written
    # elbow_flex is reversed: +30 degrees is below mid-range in ticks
    elbow = virtual.servo(3)
    assert elbow.get("Goal_Position") == round(2047 - 30 * TICKS_PER_DEG)
    assert virtual.servo(1).get("Goal_Position") == round(2047 + 10 * TICKS_PER_DEG)
    assert virtual.servo(6).get("Goal_Position") == 2300  # 50 % of 2000..2600


@ARMS
def test_joint_limits_clamp_targets(config, arm_on_emulator):
    arm, virtual, _ = arm_on_emulator(config)
    arm.connect()
    limits = arm.limits
    full = 1000 * 360 / 4095
    np.testing.assert_allclose(limits[0], [-full, full])
    np.testing.assert_allclose(limits[5], [0, 100])
    arm.write_targets(np.array([500.0, -500.0, -500.0, 0.0, 0.0, 150.0]))
    goals = lambda: [virtual.servo(i).get("Goal_Position") for i in (1, 2, 3, 6)]
    clamped = [3047, 1047, 3047, 2600]  # elbow (reversed): -500 degrees is its top
    assert wait_until(lambda: goals() == clamped, 1.0), goals()
    expected = [full, -full, -full, 0.0, (2047 - 2047.5) * 360 / 4095, 100.0]
    np.testing.assert_allclose(settle(arm, expected), expected, atol=0.2)
    with pytest.raises(ValueError, match="6 finite numbers"):
        arm.write_targets(np.array([0.0, 0, 0, 0, 0, np.nan]))
    with pytest.raises(ValueError, match="6 finite numbers"):
        arm.write_targets(np.zeros(5))


@ARMS
def test_disconnect_turns_torque_off(config, arm_on_emulator):
    arm, virtual, _ = arm_on_emulator(config)
    with arm:
        assert wait_for_torque(virtual, config, True)
    assert not arm.connected and arm.bus.serial is None
    assert wait_for_torque(virtual, config, False), torques(virtual, config)
    if config.protocol == "feetech":
        assert wait_until(lambda: not any(virtual.servo(m.id).get("Lock") for m in config.motors))
    arm.disconnect()  # twice is fine


def test_disconnect_can_hold_torque(arm_on_emulator):
    arm, virtual, _ = arm_on_emulator(SO100)
    arm.connect()
    assert wait_for_torque(virtual, SO100, True)
    arm.disconnect(torque_off=False)
    assert not wait_for_torque(virtual, SO100, False, timeout_s=0.2)


@ARMS
def test_a_missing_servo_is_named_at_connect(config, make_virtual_bus, tmp_path):
    virtual = make_virtual_bus(config.protocol, {m.id: m.model for m in config.motors[:-1]})
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(lerobot_calibration(config)))
    arm = ServoArm(config, virtual.port, path, MISSING)
    with pytest.raises(BusError, match=r"gripper \(id 6\): no answer") as caught:
        arm.connect()
    assert "shoulder_pan" not in str(caught.value)
    assert not arm.connected and arm.bus.serial is None, "a failed connect closes the port"
    assert not any(s.torque for s in virtual.servos.values())


def test_servos_at_the_wrong_ids_are_all_named(make_virtual_bus, tmp_path):
    """None answers: one short line with every id, the bus settings and what to run."""
    virtual = make_virtual_bus("feetech", {m.id + 10: m.model for m in SO100.motors})
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(lerobot_calibration(SO100)))
    with pytest.raises(BusError) as caught:
        ServoArm(SO100, virtual.port, path, MISSING).connect()
    message = str(caught.value)
    assert "none of its servos (ids 1, 2, 3, 4, 5, 6) answered" in message
    assert "(feetech, 1000000 baud)" in message
    assert f"kiwi scan --port {virtual.port}" in message


def test_the_so101_is_named_as_itself():
    assert ARMS_BY_NAME["so101"].name == "so101" and ARMS_BY_NAME["so100"].name == "so100"
    assert ARMS_BY_NAME["so101"].motors == SO100.motors
    assert KOCH.full_turn == ("shoulder_pan", "wrist_roll")
    assert SO100.full_turn == ("wrist_roll",)


def test_a_wrong_servo_model_is_named_at_connect(make_virtual_bus, tmp_path):
    virtual = make_virtual_bus("dynamixel", {m.id: "xl330-m288" for m in KOCH.motors})
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(lerobot_calibration(KOCH)))
    with pytest.raises(BusError, match=r"shoulder_pan \(id 1\): model number 1200, expected 1060"):
        ServoArm(KOCH, virtual.port, path, SETTINGS).connect()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda c: c["elbow_flex"].pop("homing_offset"),
            "motor elbow_flex: lacks \\['homing_offset'\\]",
        ),
        (
            lambda c: c["wrist_flex"].update(rang_max=c["wrist_flex"].pop("range_max")),
            "motor wrist_flex: lacks \\['range_max'\\]",
        ),
        (lambda c: c["gripper"].update(range_min="2000a"), "motor gripper: non-integer range_min"),
        (
            lambda c: c.update(shoulder_pann=c.pop("shoulder_pan")),
            "motor shoulder_pann: unknown motor \\(a typo of shoulder_pan\\?\\)",
        ),
        (lambda c: c["wrist_roll"].update(id=7), "motor wrist_roll: id 7 differs from the arm's 5"),
        # found by an attacker: each was accepted, or failed only inside the bus at connect
        (
            lambda c: c["gripper"].update(range_max=60000),
            "motor gripper: range_max 60000 is outside 0..4095",
        ),
        (
            lambda c: c["gripper"].update(range_max=99999),
            "motor gripper: range_max 99999 is outside 0..4095",
        ),
        (
            lambda c: c["wrist_flex"].update(range_min=-500),
            "motor wrist_flex: range_min -500 is outside 0..4095",
        ),
        (
            lambda c: c["elbow_flex"].update(homing_offset=100000),
            "motor elbow_flex: homing_offset 100000 is outside -2047..2047",
        ),
        (
            lambda c: c["elbow_flex"].update(drive_mode=7),
            "motor elbow_flex: drive_mode 7 is not 0 or 1",
        ),
        (
            lambda c: c.update(camera_pan={**c["gripper"], "id": 7}),
            "motor camera_pan: unknown motor",
        ),
    ],
    ids=[
        "missing-key",
        "typo-key",
        "bad-value",
        "typo-motor",
        "wrong-id",
        "range-60000",
        "range-99999",
        "range-negative",
        "offset-100000",
        "drive-mode-7",
        "extra-motor",
    ],
)
def test_a_damaged_calibration_file_names_file_motor_and_field(damage, message, tmp_path):
    calibration = lerobot_calibration(SO100)
    damage(calibration)
    path = tmp_path / "so100.json"
    path.write_text(json.dumps(calibration))
    with pytest.raises(CalibrationError, match=f"^{re.escape(str(path))}: {message}"):
        ServoArm(SO100, "/dev/unused", path, SETTINGS)


@pytest.mark.parametrize(
    ("config", "field", "value", "message"),
    [
        (SO100, "range_max", 60000, "range_max 60000 is outside 0..4095"),
        (SO100, "homing_offset", -2048, "homing_offset -2048 is outside -2047..2047"),
        (KOCH, "homing_offset", 1044480, "homing_offset 1044480 is outside -1044479..1044479"),
        (KOCH, "range_min", -1, "range_min -1 is outside 0..4095"),
    ],
    ids=["so100-range", "so100-offset", "koch-offset", "koch-range"],
)
def test_connect_checks_the_calibration_before_writing_eeprom(
    config, field, value, message, arm_on_emulator
):
    arm, virtual, _ = arm_on_emulator(config)
    gripper = arm.calibration["gripper"]
    arm.calibration["gripper"] = dataclasses.replace(gripper, **{field: value})
    with pytest.raises(CalibrationError, match=f"motor gripper: {message}"):
        arm.connect()
    assert virtual.requests == 0, "nothing reached the servos"
    assert virtual.servo(6).get("Max_Position_Limit") == 4095
    assert not arm.connected and arm.bus.serial is None


def test_koch_connects_to_the_emulator_built_for_it(tmp_path):
    virtual = VirtualBus.for_arm(KOCH).start()
    try:
        assert [virtual.servo(i).model.name for i in (1, 2, 3, 6)] == [
            "xl430-w250",
            "xl430-w250",
            "xl330-m288",
            "xl330-m288",
        ]
        path = tmp_path / "koch.json"
        path.write_text(json.dumps(lerobot_calibration(KOCH)))
        with ServoArm(KOCH, virtual.port, path, SETTINGS) as arm:
            assert arm.read_joints().shape == (6,)
    finally:
        virtual.stop()


def test_connect_turns_feetech_multi_turn_feedback_off(arm_on_emulator):
    arm, virtual, _ = arm_on_emulator(SO100)
    virtual.servo(2).set("Phase", 0x1C)  # bit 4 on, with other bits that must stay
    arm.connect()
    assert virtual.servo(2).get("Phase") == 0x0C
    assert virtual.servo(1).get("Phase") == 0


@ARMS
def test_every_read_and_write_failure_is_a_bus_error(config, make_virtual_bus, tmp_path):
    """What the runtime relies on: it catches BusError, holds the last good joints, goes on."""
    virtual = make_virtual_bus(config.protocol, {m.id: m.model for m in config.motors})
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(lerobot_calibration(config)))
    arm = ServoArm(config, virtual.port, path, BusSettings(timeout_s=0.01, retries=0))
    arm.connect()
    virtual.faults = Faults(drop=0.1, corrupt=0.3, seed=5)
    virtual.rng = np.random.default_rng(5)
    errors, reads = [], 0
    try:
        for k in range(150):
            try:
                joints = arm.read_joints()
                reads += 1
                assert joints.shape == (6,) and np.all(np.isfinite(joints))
                arm.write_targets(np.full(6, float(k % 20)))
            except BusError as e:
                errors.append(e)
    finally:
        virtual.faults = Faults()
        arm.disconnect()
    assert errors and reads, (len(errors), reads)
    assert arm.bus.stats.failures == len(errors)
