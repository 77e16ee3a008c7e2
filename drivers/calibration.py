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
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

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


def load(path: Path, expected: dict[str, int] | None = None) -> dict[str, MotorCalibration]:
    """Reads a LeRobot calibration file; ``expected`` maps motor names to ids to check against."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(
            f"calibration file not found: {path} (make one with `kiwi calibrate`)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CalibrationError(f"{path}: expected an object of motors")
    out = {}
    for name, entry in raw.items():
        fields = ("id", "drive_mode", "homing_offset", "range_min", "range_max")
        missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise CalibrationError(f"{path}: motor {name!r} lacks {missing}")
        values = [entry[f] for f in fields]
        bad = [f for f, v in zip(fields, values) if not _is_int(v)]
        if bad:
            shown = ", ".join(f"{f}={entry[f]!r}" for f in bad)
            raise CalibrationError(f"{path}: motor {name!r} has non-integer {shown}")
        cal = MotorCalibration(*(int(v) for v in values))
        if cal.range_min >= cal.range_max:
            raise CalibrationError(
                f"{path}: motor {name!r} has range_min >= range_max "
                f"({cal.range_min} >= {cal.range_max}); recalibrate it"
            )
        out[name] = cal
    if expected is not None:
        missing = sorted(set(expected) - set(out))
        if missing:
            unknown = sorted(set(out) - set(expected))
            also = f" (it has unknown motors {unknown}: a typo?)" if unknown else ""
            raise CalibrationError(f"{path}: no calibration for {missing}{also}")
        wrong = {n: (out[n].id, i) for n, i in expected.items() if out[n].id != i}
        if wrong:
            raise CalibrationError(f"{path}: ids differ from the arm's (file, arm): {wrong}")
    return out


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
