"""Control tables as typed data: per servo model, register name -> (address, size, encoding).

Addresses and sizes follow the vendors' manuals (Feetech STS3215; ROBOTIS X series), as LeRobot
also lists them. ``sign_bit`` marks Feetech's sign-magnitude fields (the bit that carries the
sign); Dynamixel's signed fields are two's complement.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from .errors import UnknownRegister


@dataclass(frozen=True)
class Register:
    name: str
    address: int
    size: int  # bytes: 1, 2 or 4
    sign_bit: int | None = None  # Feetech sign-magnitude: the bit holding the sign
    signed: bool = False  # Dynamixel two's complement
    eeprom: bool = False  # written only with torque off
    # Valid values per the manual, where narrower than what the field can hold. Writes outside
    # are refused; reads outside are damaged replies (a checksum does not catch everything).
    low: int | None = None
    high: int | None = None

    def allows(self, value: int) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    @property
    def range_text(self) -> str:
        return f"{self.low}..{self.high}"


@dataclass(frozen=True)
class ServoModel:
    name: str
    protocol: str  # "feetech" or "dynamixel"
    model_number: int
    resolution: int  # position ticks per revolution
    registers: dict[str, Register]

    def register(self, name: str) -> Register:
        try:
            return self.registers[name]
        except KeyError:
            raise UnknownRegister(
                f"unknown register {name!r} for {self.name}; "
                f"{did_you_mean(name, self.registers)}valid: {', '.join(sorted(self.registers))}"
            ) from None


def did_you_mean(name: str, known) -> str:
    """``"did you mean Present_Position? "`` for a close match (any case), else ``""``."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"did you mean {by_lower[close[0]]}? " if close else ""


def _table(*rows: tuple, ranges: dict[str, tuple[int, int]]) -> dict[str, Register]:
    table = {r[0]: Register(*r) for r in rows}
    for name, (low, high) in ranges.items():
        table[name] = replace(table[name], low=low, high=high)
    return table


_STS = _table(
    ("Firmware_Major_Version", 0, 1),
    ("Firmware_Minor_Version", 1, 1),
    ("Model_Number", 3, 2),
    ("ID", 5, 1, None, False, True),
    ("Baud_Rate", 6, 1, None, False, True),
    ("Return_Delay_Time", 7, 1, None, False, True),
    ("Response_Status_Level", 8, 1, None, False, True),
    ("Min_Position_Limit", 9, 2, None, False, True),
    ("Max_Position_Limit", 11, 2, None, False, True),
    ("Max_Temperature_Limit", 13, 1, None, False, True),
    ("Max_Voltage_Limit", 14, 1, None, False, True),
    ("Min_Voltage_Limit", 15, 1, None, False, True),
    ("Max_Torque_Limit", 16, 2, None, False, True),
    ("Phase", 18, 1, None, False, True),
    ("Unloading_Condition", 19, 1, None, False, True),
    ("LED_Alarm_Condition", 20, 1, None, False, True),
    ("P_Coefficient", 21, 1, None, False, True),
    ("D_Coefficient", 22, 1, None, False, True),
    ("I_Coefficient", 23, 1, None, False, True),
    ("Minimum_Startup_Force", 24, 2, None, False, True),
    ("CW_Dead_Zone", 26, 1, None, False, True),
    ("CCW_Dead_Zone", 27, 1, None, False, True),
    ("Protection_Current", 28, 2, None, False, True),
    ("Angular_Resolution", 30, 1, None, False, True),
    ("Homing_Offset", 31, 2, 11, False, True),
    ("Operating_Mode", 33, 1, None, False, True),
    ("Protective_Torque", 34, 1, None, False, True),
    ("Protection_Time", 35, 1, None, False, True),
    ("Overload_Torque", 36, 1, None, False, True),
    ("Torque_Enable", 40, 1),
    ("Acceleration", 41, 1),
    ("Goal_Position", 42, 2, 15),
    ("Goal_Time", 44, 2),
    ("Goal_Velocity", 46, 2, 15),
    ("Torque_Limit", 48, 2),
    ("Lock", 55, 1),
    ("Present_Position", 56, 2, 15),
    ("Present_Velocity", 58, 2, 15),
    ("Present_Load", 60, 2, 10),
    ("Present_Voltage", 62, 1),
    ("Present_Temperature", 63, 1),
    ("Status", 65, 1),
    ("Moving", 66, 1),
    ("Present_Current", 69, 2),
    ("Maximum_Acceleration", 85, 1),
    ranges={
        "Homing_Offset": (-2047, 2047),  # sign-magnitude, sign at bit 11
        "Min_Position_Limit": (0, 4095),
        "Max_Position_Limit": (0, 4095),
        # single-turn feedback (Phase bit 4 clear, as ServoArm.connect makes sure)
        "Present_Position": (0, 4095),
        "Moving": (0, 1),
    },
)

_X_SERIES = _table(
    ("Model_Number", 0, 2),
    ("Model_Information", 2, 4),
    ("Firmware_Version", 6, 1),
    ("ID", 7, 1, None, False, True),
    ("Baud_Rate", 8, 1, None, False, True),
    ("Return_Delay_Time", 9, 1, None, False, True),
    ("Drive_Mode", 10, 1, None, False, True),
    ("Operating_Mode", 11, 1, None, False, True),
    ("Secondary_ID", 12, 1, None, False, True),
    ("Protocol_Type", 13, 1, None, False, True),
    ("Homing_Offset", 20, 4, None, True, True),
    ("Moving_Threshold", 24, 4, None, False, True),
    ("Temperature_Limit", 31, 1, None, False, True),
    ("Max_Voltage_Limit", 32, 2, None, False, True),
    ("Min_Voltage_Limit", 34, 2, None, False, True),
    ("PWM_Limit", 36, 2, None, False, True),
    ("Current_Limit", 38, 2, None, False, True),
    ("Velocity_Limit", 44, 4, None, False, True),
    ("Max_Position_Limit", 48, 4, None, False, True),
    ("Min_Position_Limit", 52, 4, None, False, True),
    ("Shutdown", 63, 1, None, False, True),
    ("Torque_Enable", 64, 1),
    ("LED", 65, 1),
    ("Status_Return_Level", 68, 1),
    ("Registered_Instruction", 69, 1),
    ("Hardware_Error_Status", 70, 1),
    ("Velocity_I_Gain", 76, 2),
    ("Velocity_P_Gain", 78, 2),
    ("Position_D_Gain", 80, 2),
    ("Position_I_Gain", 82, 2),
    ("Position_P_Gain", 84, 2),
    ("Feedforward_2nd_Gain", 88, 2),
    ("Feedforward_1st_Gain", 90, 2),
    ("Bus_Watchdog", 98, 1),
    ("Goal_PWM", 100, 2, None, True),
    ("Goal_Current", 102, 2, None, True),
    ("Goal_Velocity", 104, 4, None, True),
    ("Profile_Acceleration", 108, 4),
    ("Profile_Velocity", 112, 4),
    ("Goal_Position", 116, 4, None, True),
    ("Realtime_Tick", 120, 2),
    ("Moving", 122, 1),
    ("Moving_Status", 123, 1),
    ("Present_PWM", 124, 2, None, True),
    ("Present_Current", 126, 2, None, True),
    ("Present_Velocity", 128, 4, None, True),
    ("Present_Position", 132, 4, None, True),
    ("Velocity_Trajectory", 136, 4, None, True),
    ("Position_Trajectory", 140, 4, None, True),
    ("Present_Input_Voltage", 144, 2),
    ("Present_Temperature", 146, 1),
    ranges={
        "Homing_Offset": (-1_044_479, 1_044_479),
        "Min_Position_Limit": (0, 4095),
        "Max_Position_Limit": (0, 4095),
        "Moving": (0, 1),
        # Present_Position spans the whole int32 in extended-position mode: no narrower range
    },
)

MODELS: dict[str, ServoModel] = {
    "sts3215": ServoModel("sts3215", "feetech", 777, 4096, _STS),
    "xl330-m077": ServoModel("xl330-m077", "dynamixel", 1190, 4096, _X_SERIES),
    "xl330-m288": ServoModel("xl330-m288", "dynamixel", 1200, 4096, _X_SERIES),
    "xl430-w250": ServoModel("xl430-w250", "dynamixel", 1060, 4096, _X_SERIES),
}
BY_NUMBER = {(m.protocol, m.model_number): m for m in MODELS.values()}

# Baud-rate register codes.
FEETECH_BAUD = {
    1_000_000: 0,
    500_000: 1,
    250_000: 2,
    128_000: 3,
    115_200: 4,
    57_600: 5,
    38_400: 6,
    19_200: 7,
}
DYNAMIXEL_BAUD = {
    9_600: 0,
    57_600: 1,
    115_200: 2,
    1_000_000: 3,
    2_000_000: 4,
    3_000_000: 5,
    4_000_000: 6,
}


def model(name: str) -> ServoModel:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownRegister(
            f"unknown servo model {name!r}; {did_you_mean(name, MODELS)}known: {', '.join(MODELS)}"
        ) from None


def model_by_number(protocol: str, number: int) -> ServoModel | None:
    return BY_NUMBER.get((protocol, number))


BAUDS = {"feetech": FEETECH_BAUD, "dynamixel": DYNAMIXEL_BAUD}


def baud_problem(protocol: str, baudrate: int) -> str | None:
    """``"baud rate 12345 is not one feetech servos use (...)"``, or None for a valid one."""
    rates = BAUDS[protocol]
    if baudrate in rates:
        return None
    return (
        f"baud rate {baudrate} is not one {protocol} servos use "
        f"({', '.join(str(b) for b in sorted(rates, reverse=True))})"
    )
