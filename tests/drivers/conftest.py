"""Fixtures for the driver tests: emulated servo buses on real pseudo-terminals."""

from __future__ import annotations

import pytest

from drivers.bus import BusSettings, MotorBus
from drivers.virtual_bus import VirtualBus

from .support import PATIENT


@pytest.fixture
def make_virtual_bus():
    """``make_virtual_bus("feetech", {1: "sts3215"}, faults=...)``: started, stopped after."""
    made: list[VirtualBus] = []

    def make(protocol: str, servos: dict[int, str], **kwargs) -> VirtualBus:
        bus = VirtualBus(protocol, servos, **kwargs).start()
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.stop()


@pytest.fixture
def open_motor_bus():
    """``open_motor_bus(virtual_bus, settings)``: an open MotorBus on the emulator's port."""
    opened: list[MotorBus] = []

    def make(virtual: VirtualBus, settings: BusSettings = PATIENT) -> MotorBus:
        bus = MotorBus(virtual.port, virtual.protocol, settings).open()
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        bus.close()
