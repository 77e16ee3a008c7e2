"""Serial ports on this machine: listing them, and the USB latency timer that slows every read.

FTDI-style USB-serial adapters batch bytes for up to ``latency_timer`` ms (16 by default): with it,
every reply costs ~16 ms and a 6-servo arm cannot run faster than ~30 Hz. Setting it to 1 ms is
the fix (DynamixelSDK #330, LeRobot PR #116).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def list_ports() -> list[tuple[str, str]]:
    """(device, description) of the serial ports the OS knows (USB adapters first)."""
    from serial.tools import list_ports as lp

    ports = [(p.device, p.description or "") for p in lp.comports()]
    return sorted(ports, key=lambda p: ("USB" not in p[0] and "ACM" not in p[0], p[0]))


def latency_timer_ms(port: str, sysfs: Path = Path("/sys/bus/usb-serial/devices")) -> int | None:
    """The USB-serial latency timer of ``port`` on Linux, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    name = Path(os.path.realpath(port)).name
    try:
        return int((sysfs / name / "latency_timer").read_text().strip())
    except (OSError, ValueError):
        return None


def latency_warning(port: str, sysfs: Path = Path("/sys/bus/usb-serial/devices")) -> str | None:
    ms = latency_timer_ms(port, sysfs)
    if ms is None or ms <= 1:
        return None
    name = Path(os.path.realpath(port)).name
    return (
        f"warning: {port}'s USB latency timer is {ms} ms: every servo reply waits for it. "
        f"Set it to 1 ms: `echo 1 | sudo tee {sysfs}/{name}/latency_timer` (until unplugged), "
        f'or for good a udev rule: ACTION=="add", SUBSYSTEM=="usb-serial", '
        f'DRIVER=="ftdi_sio", ATTR{{latency_timer}}="1"'
    )
