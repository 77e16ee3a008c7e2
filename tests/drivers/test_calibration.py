"""Calibration maths against hand-computed cases, and the LeRobot JSON layout."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import calibration as cal
from drivers.calibration import DEGREES, RANGE_0_100, CalibrationError, MotorCalibration
from drivers.tables import MODELS

JOINT = MotorCalibration(id=1, drive_mode=0, homing_offset=0, range_min=1000, range_max=3000)
REVERSED = MotorCalibration(id=1, drive_mode=1, homing_offset=0, range_min=1000, range_max=3000)
GRIPPER = MotorCalibration(id=6, drive_mode=0, homing_offset=0, range_min=1000, range_max=2000)
GRIPPER_REVERSED = MotorCalibration(6, 1, 0, 1000, 2000)
DEG_PER_TICK = 360 / 4095


def test_degrees_are_zero_mid_range_and_scale_by_360_over_4095():
    assert cal.to_units(2000, JOINT, DEGREES) == 0.0
    assert cal.to_units(3000, JOINT, DEGREES) == pytest.approx(1000 * DEG_PER_TICK)  # 87.912
    assert cal.to_units(1000, JOINT, DEGREES) == pytest.approx(-87.91208791)
    assert cal.to_units(2001, JOINT, DEGREES) == pytest.approx(0.0879120879)
    # degrees are not clamped on the way in: a joint past its range reads as such
    assert cal.to_units(3500, JOINT, DEGREES) == pytest.approx(1500 * DEG_PER_TICK)


def test_drive_mode_flips_degrees():
    assert cal.to_units(3000, REVERSED, DEGREES) == pytest.approx(-1000 * DEG_PER_TICK)
    assert cal.to_ticks(45.0, REVERSED, DEGREES) == round(2000 - 45 / DEG_PER_TICK)  # 1488
    assert cal.to_ticks(45.0, JOINT, DEGREES) == 2512


def test_degrees_to_ticks_clamps_to_the_calibrated_range():
    assert cal.to_ticks(0.0, JOINT, DEGREES) == 2000
    assert cal.to_ticks(90.0, JOINT, DEGREES) == 3000  # 90 degrees would be 3024 ticks
    assert cal.to_ticks(-400.0, JOINT, DEGREES) == 1000
    assert cal.to_ticks(90.0, REVERSED, DEGREES) == 1000


def test_gripper_range_0_100_clamps_and_flips():
    assert cal.to_units(1500, GRIPPER, RANGE_0_100) == 50.0
    assert cal.to_units(1250, GRIPPER, RANGE_0_100) == 25.0
    assert cal.to_units(500, GRIPPER, RANGE_0_100) == 0.0
    assert cal.to_units(2500, GRIPPER, RANGE_0_100) == 100.0
    assert cal.to_units(1250, GRIPPER_REVERSED, RANGE_0_100) == 75.0
    assert cal.to_ticks(25.0, GRIPPER, RANGE_0_100) == 1250
    assert cal.to_ticks(25.0, GRIPPER_REVERSED, RANGE_0_100) == 1750
    assert cal.to_ticks(150.0, GRIPPER, RANGE_0_100) == 2000
    assert cal.to_ticks(-5.0, GRIPPER, RANGE_0_100) == 1000


def test_limits_in_joint_units():
    assert cal.limits(JOINT, DEGREES) == pytest.approx((-87.91208791, 87.91208791))
    assert cal.limits(REVERSED, DEGREES) == pytest.approx((-87.91208791, 87.91208791))
    off_centre = MotorCalibration(1, 0, 0, 1500, 3000)
    assert cal.limits(off_centre, DEGREES) == pytest.approx(
        (-750 * DEG_PER_TICK, 750 * DEG_PER_TICK)
    )
    assert cal.limits(GRIPPER, RANGE_0_100) == (0.0, 100.0)


def test_half_turn_homing_follows_each_vendors_sign():
    # Feetech: present = raw - offset; Dynamixel: present = raw + offset; both land on 2047
    assert cal.half_turn_homing("feetech", 3000) == 953
    assert 3000 - cal.half_turn_homing("feetech", 3000) == 2047
    assert cal.half_turn_homing("dynamixel", 3000) == -953
    assert 3000 + cal.half_turn_homing("dynamixel", 3000) == 2047
    assert cal.half_turn_homing("feetech", 100) == -1947


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 4000),
    st.integers(1, 4095),
    st.integers(0, 1),
    st.sampled_from([DEGREES, RANGE_0_100]),
    st.data(),
)
def test_ticks_to_units_and_back_is_exact(low, span, drive_mode, mode, data):
    high = min(4095, low + span)
    c = MotorCalibration(1, drive_mode, 0, low, high)
    ticks = data.draw(st.integers(low, high))
    assert cal.to_ticks(cal.to_units(ticks, c, mode), c, mode) == ticks
    lo, hi = cal.limits(c, mode)
    assert lo - 1e-9 <= cal.to_units(ticks, c, mode) <= hi + 1e-9


# --- the file -----------------------------------------------------------------------------------


def test_save_then_load_round_trips_in_lerobot_layout(tmp_path):
    calibration = {"shoulder_pan": JOINT, "gripper": GRIPPER_REVERSED}
    path = tmp_path / "arm" / "so100.json"
    cal.save(path, calibration)
    assert json.loads(path.read_text()) == {
        "shoulder_pan": {
            "id": 1,
            "drive_mode": 0,
            "homing_offset": 0,
            "range_min": 1000,
            "range_max": 3000,
        },
        "gripper": {
            "id": 6,
            "drive_mode": 1,
            "homing_offset": 0,
            "range_min": 1000,
            "range_max": 2000,
        },
    }
    assert cal.load(path, {"shoulder_pan": 1, "gripper": 6}) == calibration
    assert [p.name for p in path.parent.iterdir()] == ["so100.json"], "no temporary left over"


def write(tmp_path, content) -> object:
    path = tmp_path / "cal.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def entry(**changes) -> dict:
    base = {"id": 1, "drive_mode": 0, "homing_offset": -12, "range_min": 100, "range_max": 200}
    return {**base, **changes}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "expected an object of motors"),
        (
            {"elbow_flex": entry(range_min=300)},
            "cal.json: motor elbow_flex: range_min 300 is not below range_max 200",
        ),
        ({"elbow_flex": {"id": 1}}, "motor elbow_flex: lacks \\['drive_mode', 'homing_offset'"),
        ({"elbow_flex": 5}, "motor elbow_flex: lacks"),
        ({"elbow_flex": entry(homing_offset=None)}, "motor elbow_flex: non-integer homing_offset"),
        ({"elbow_flex": entry(range_max=2.5)}, "motor elbow_flex: non-integer range_max=2.5"),
        ({"elbow_flex": entry(drive_mode=True)}, "motor elbow_flex: non-integer drive_mode"),
        ({"elbow_flex": entry(drive_mode=7)}, "motor elbow_flex: drive_mode 7 is not 0 or 1"),
        ({"elbow_flex": entry(drive_mode=-1)}, "motor elbow_flex: drive_mode -1 is not 0 or 1"),
        ({"elbow_flex": entry(id=300)}, "motor elbow_flex: id 300 is outside 0..252"),
    ],
)
def test_a_bad_file_is_a_calibration_error_naming_the_motor(tmp_path, content, message):
    with pytest.raises(CalibrationError, match=message):
        cal.load(write(tmp_path, content))


STS = {"gripper": MODELS["sts3215"]}
XL = {"gripper": MODELS["xl330-m288"]}


@pytest.mark.parametrize(
    ("models", "changes", "message"),
    [
        (STS, {"range_max": 60000}, "range_max 60000 is outside 0..4095"),
        (STS, {"range_max": 99999}, "range_max 99999 is outside 0..4095"),
        (STS, {"range_min": -500}, "range_min -500 is outside 0..4095"),
        (STS, {"homing_offset": 100000}, "homing_offset 100000 is outside -2047..2047"),
        (STS, {"homing_offset": 2048}, "homing_offset 2048 is outside -2047..2047"),
        (STS, {"homing_offset": -2048}, "homing_offset -2048 is outside -2047..2047"),
        (XL, {"range_max": 4096}, "range_max 4096 is outside 0..4095"),
        (XL, {"homing_offset": 1044480}, "homing_offset 1044480 is outside -1044479..1044479"),
        (XL, {"homing_offset": -1044480}, "homing_offset -1044480 is outside -1044479..1044479"),
    ],
)
def test_values_outside_the_servos_registers_name_file_motor_and_field(
    tmp_path, models, changes, message
):
    path = write(tmp_path, {"gripper": entry(id=6, **changes)})
    with pytest.raises(CalibrationError) as caught:
        cal.load(path, {"gripper": 6}, models)
    text = str(caught.value)
    assert text.startswith(f"{path}: motor gripper: {message}"), text
    assert "\n" not in text


@pytest.mark.parametrize("models", [STS, XL])
def test_values_at_the_edges_of_the_registers_are_accepted(tmp_path, models):
    limit = -models["gripper"].register("Homing_Offset").low
    for offset in (limit, -limit):
        path = write(tmp_path, {"gripper": entry(id=6, homing_offset=offset, range_max=4095)})
        assert cal.load(path, {"gripper": 6}, models)["gripper"].homing_offset == offset
    path = write(tmp_path, {"gripper": entry(id=6, range_min=0, range_max=4095)})
    assert cal.load(path, {"gripper": 6}, models)["gripper"].range_min == 0


def test_validate_checks_calibrations_not_read_from_a_file():
    good = {"gripper": MotorCalibration(6, 0, 0, 100, 200)}
    cal.validate(good, "mine", {"gripper": 6}, STS)
    with pytest.raises(CalibrationError, match="^mine: motor gripper: range_max 5000 is outside"):
        cal.validate({"gripper": MotorCalibration(6, 0, 0, 100, 5000)}, "mine", None, STS)


def test_whole_number_floats_are_accepted(tmp_path):
    loaded = cal.load(write(tmp_path, {"elbow_flex": entry(range_max=200.0)}))
    assert loaded["elbow_flex"].range_max == 200


def test_expected_motors_and_ids_are_checked(tmp_path):
    path = write(tmp_path, {"elbow_flex": entry(id=3), "gripper": entry(id=6)})
    assert set(cal.load(path, {"elbow_flex": 3, "gripper": 6})) == {"elbow_flex", "gripper"}
    with pytest.raises(CalibrationError, match="no calibration for \\['wrist_roll'\\]"):
        cal.load(path, {"elbow_flex": 3, "gripper": 6, "wrist_roll": 5})
    with pytest.raises(CalibrationError, match="motor elbow_flex: id 3 differs from the arm's 4"):
        cal.load(path, {"elbow_flex": 4, "gripper": 6})


def test_an_extra_motor_is_an_error_even_when_every_expected_one_is_there(tmp_path):
    path = write(tmp_path, {"gripper": entry(id=6), "gripper2": entry(id=7)})
    typo = "motor gripper2: unknown motor \\(a typo of gripper\\?\\)"
    with pytest.raises(CalibrationError, match=typo):
        cal.load(path, {"gripper": 6})
    path = write(tmp_path, {"gripper": entry(id=6), "camera": entry(id=7)})
    other = "motor camera: unknown motor \\(the arm has gripper\\)"
    with pytest.raises(CalibrationError, match=other):
        cal.load(path, {"gripper": 6})


def test_a_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(CalibrationError, match="kiwi calibrate"):
        cal.load(tmp_path / "nope.json")
