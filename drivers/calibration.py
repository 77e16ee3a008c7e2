"""Calibration files in LeRobot's JSON layout, and the maths between ticks and joint units.

A file maps each motor name to ``{"id", "drive_mode", "homing_offset", "range_min",
"range_max"}`` (what ``lerobot-calibrate`` writes), so an arm calibrated with LeRobot works here
unchanged. Conversions follow LeRobot's conventions:

- degrees (arm joints): ``(ticks - mid) * 360 / (resolution - 1)``, mid = (range_min + range_max)/2;
- 0..100 (grippers): ``(clamp(ticks) - range_min) / (range_max - range_min) * 100``;
- ``drive_mode`` 1 flips the direction (100 - v for 0..100, -v for degrees).

The ticks are the servo's *present* values, i.e. after its homing offset (Feetech: present =
actual - offset; Dynamixel: present = actual + offset), which ``ServoArm.connect`` writes to the
servos from the file. All of this is pure code.

``validate`` checks each motor's values against its servo model's registers (what the servo can
hold: Feetech offsets +-2047, positions 0..4095; Dynamixel X offsets +-1044479), so a bad file
fails when it is read, with one line naming the file, the motor and the field, never half-way
through writing EEPROM.
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .tables import ServoModel

DEGREES, RANGE_0_100 = "degrees", "range_0_100"


class CalibrationError(ValueError):
    pass


@dataclass(frozen=True)
class MotorCalibration:
    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int


FIELDS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")
MAX_ID = 252
# The calibration field -> the register it is written to.
REGISTERS = {
    "homing_offset": "Homing_Offset",
    "range_min": "Min_Position_Limit",
    "range_max": "Max_Position_Limit",
}


def load(
    path: Path,
    expected: dict[str, int] | None = None,
    models: dict[str, ServoModel] | None = None,
) -> dict[str, MotorCalibration]:
    """Reads a LeRobot calibration file and ``validate``s it: ``expected`` maps the arm's motor
    names to ids, ``models`` its motor names to servo models (for the register ranges)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(
            f"calibration file not found: {path} (make one with `kiwi calibrate`)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path}: not valid JSON: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{path}: cannot be read: {e}") from e
    if not isinstance(raw, dict):
        raise CalibrationError(f"{path}: expected an object of motors")
    out = {}
    for name, entry in raw.items():
        missing = [f for f in FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise CalibrationError(f"{path}: motor {name}: lacks {missing}")
        bad = [f for f in FIELDS if not _is_int(entry[f])]
        if bad:
            shown = ", ".join(f"{f}={entry[f]!r}" for f in bad)
            raise CalibrationError(f"{path}: motor {name}: non-integer {shown}")
        out[name] = MotorCalibration(*(int(entry[f]) for f in FIELDS))
    validate(out, str(path), expected, models)
    return out


def validate(
    calibration: dict[str, MotorCalibration],
    source: str,
    expected: dict[str, int] | None = None,
    models: dict[str, ServoModel] | None = None,
) -> None:
    """Raises CalibrationError (one line: source, motor, field) unless every motor is one the arm
    has (``expected``: name -> id), all of them are there, and each value fits: id 0..252,
    drive_mode 0 or 1, range_min < range_max, and with ``models`` (name -> servo model) the
    offset and range within what the servo's registers hold."""
    if expected is not None:
        for name in calibration:
            if name not in expected:
                close = difflib.get_close_matches(name, list(expected), n=1)
                hint = f"a typo of {close[0]}?" if close else f"the arm has {', '.join(expected)}"
                raise CalibrationError(f"{source}: motor {name}: unknown motor ({hint})")
        missing = [n for n in expected if n not in calibration]
        if missing:
            raise CalibrationError(f"{source}: no calibration for {missing}")
    for name, c in calibration.items():
        problem = motor_problem(c, models.get(name) if models else None)
        if problem is None and expected is not None and c.id != expected[name]:
            problem = f"id {c.id} differs from the arm's {expected[name]}"
        if problem is not None:
            raise CalibrationError(f"{source}: motor {name}: {problem}")


def motor_problem(c: MotorCalibration, model: ServoModel | None = None) -> str | None:
    """What is wrong with one motor's values (naming the field), or None."""
    if not 0 <= c.id <= MAX_ID:
        return f"id {c.id} is outside 0..{MAX_ID}"
    if c.drive_mode not in (0, 1):
        return f"drive_mode {c.drive_mode} is not 0 or 1"
    if model is not None:
        for field, reg_name in REGISTERS.items():
            problem = value_problem(field, getattr(c, field), model, reg_name)
            if problem is not None:
                return problem
    if c.range_min >= c.range_max:
        return f"range_min {c.range_min} is not below range_max {c.range_max} (recalibrate it)"
    return None


def value_problem(field: str, value: int, model: ServoModel, reg_name: str) -> str | None:
    """``"range_max 60000 is outside 0..4095"`` where ``value`` does not fit the register."""
    reg = model.register(reg_name)
    if reg.allows(value):
        return None
    return f"{field} {value} is outside {reg.range_text} ({model.name} {reg_name})"


def _is_int(value) -> bool:
    """JSON integers (or floats with no fraction); not bools, strings or null."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def save(path: Path, calibration: dict[str, MotorCalibration]) -> None:
    """Written to a temporary file and renamed, so a crash never leaves half a calibration."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({n: asdict(c) for n, c in calibration.items()}, indent=4) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def to_units(ticks: float, cal: MotorCalibration, mode: str, resolution: int = 4096) -> float:
    if mode == DEGREES:
        mid = (cal.range_min + cal.range_max) / 2
        value = (ticks - mid) * 360.0 / (resolution - 1)
        return -value if cal.drive_mode else value
    bounded = min(cal.range_max, max(cal.range_min, ticks))
    value = (bounded - cal.range_min) / (cal.range_max - cal.range_min) * 100.0
    return 100.0 - value if cal.drive_mode else value


def to_ticks(value: float, cal: MotorCalibration, mode: str, resolution: int = 4096) -> int:
    """Joint units -> present ticks, clamped to the calibrated range (the joint limits)."""
    if mode == DEGREES:
        value = -value if cal.drive_mode else value
        mid = (cal.range_min + cal.range_max) / 2
        ticks = value * (resolution - 1) / 360.0 + mid
    else:
        value = 100.0 - value if cal.drive_mode else value
        ticks = (
            min(100.0, max(0.0, value)) / 100.0 * (cal.range_max - cal.range_min) + cal.range_min
        )
    return int(round(min(cal.range_max, max(cal.range_min, ticks))))


def limits(cal: MotorCalibration, mode: str, resolution: int = 4096) -> tuple[float, float]:
    """The joint's range in its own units."""
    if mode == RANGE_0_100:
        return 0.0, 100.0
    a, b = (
        to_units(cal.range_min, cal, mode, resolution),
        to_units(cal.range_max, cal, mode, resolution),
    )
    return min(a, b), max(a, b)


def half_turn_homing(protocol: str, present_ticks: int, resolution: int = 4096) -> int:
    """The homing offset that makes the current position read as mid-range (LeRobot's recipe:
    Feetech offset = pos - 2047, Dynamixel offset = 2047 - pos, given raw positions)."""
    half = resolution // 2 - 1
    return present_ticks - half if protocol == "feetech" else half - present_ticks


STILL_TICKS = 10  # a hand holding a joint steady wobbles a few ticks of a 4096-tick turn


class MotionRecorder:
    """Each servo's lowest and highest position seen, and how long the arm has been still (no
    servo further than ``still_ticks`` from where all were when they last stopped). Each sample
    carries its time (seconds, any clock): no clock in here."""

    def __init__(self, still_ticks: int = STILL_TICKS):
        self.still_ticks = still_ticks
        self.lows: dict[int, int] = {}
        self.highs: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self._anchor: dict[int, int] = {}
        self._still_since = self._t = 0.0

    def add(self, t_s: float, positions: dict[int, int]) -> None:
        for i, v in positions.items():
            self.lows[i] = min(self.lows.get(i, v), v)
            self.highs[i] = max(self.highs.get(i, v), v)
        moved = not self._anchor or any(
            abs(v - self._anchor.get(i, v)) > self.still_ticks for i, v in positions.items()
        )
        if moved:
            self._anchor, self._still_since = dict(positions), t_s
        self.last, self._t = dict(positions), t_s

    @property
    def still_s(self) -> float:
        """For how long (seconds, up to the last sample) no servo has moved."""
        return self._t - self._still_since if self.last else 0.0

    def travel(self, servo_id: int) -> int:
        return self.highs[servo_id] - self.lows[servo_id]


def travel_problem(low: int, high: int, min_travel: int) -> str | None:
    """``"moved through only 40 ticks (at least 200 needed)"``, or None."""
    if high - low >= min_travel:
        return None
    if high <= low:
        return f"did not move (range {low}..{high})"
    return f"moved through only {high - low} ticks ({low}..{high}; at least {min_travel} needed)"
