"""Stalled replies (50 ms, past the 20 ms timeout) with dropped and corrupted ones: thousands of
sync reads never return a wrong value, and a late reply never poisons the next transaction."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from drivers.bus import BusSettings
from drivers.errors import BusError
from drivers.tables import MODELS
from drivers.virtual_bus import Faults

MODEL = {"feetech": "sts3215", "dynamixel": "xl330-m288"}
IDS = [1, 2, 3, 4, 5, 6]
RUNTIME = BusSettings(timeout_s=0.02, retries=2)  # the driver's defaults


def place(virtual, positions: dict[int, int]) -> None:
    """Moves the emulated servos (torque off) between cycles, as the server thread sees them."""
    with virtual._lock:
        for servo_id, ticks in positions.items():
            servo = virtual.servo(servo_id)
            servo.actual = servo.goal = float(ticks)


def sync_read_under_faults(virtual, bus, cycles: int, seed: int) -> dict:
    """Runs ``cycles`` sync reads of Present_Position, with every servo at a new random position
    before each. A value must be one the servo held during the last few cycles (a reply that came
    late is older, not wrong); anything else is wrong. Returns the counts."""
    present = MODELS[virtual.servo(1).model.name].register("Present_Position")
    rng = np.random.default_rng(seed)
    recent: deque = deque(maxlen=4)  # positions of this cycle and the three before
    counts = {"cycles": cycles, "ok": 0, "stale": 0, "wrong": 0, "bus_errors": 0}
    for _ in range(cycles):
        positions = {i: int(rng.integers(0, 4096)) for i in IDS}
        place(virtual, positions)
        recent.append(positions)
        try:
            values = bus.sync_read(present, IDS)
        except BusError:
            counts["bus_errors"] += 1
            continue
        for servo_id, value in values.items():
            held = [p[servo_id] for p in recent]
            if value == held[-1]:
                counts["ok"] += 1
            elif value in held:
                counts["stale"] += 1
            else:
                counts["wrong"] += 1
    stats = bus.stats.summary()
    counts.update({k: stats[k] for k in ("retries", "timeouts", "corrupt", "failures")})
    return counts


@pytest.mark.parametrize("cycles", [250, pytest.param(2000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_stalls_drops_and_corruption_never_return_a_wrong_value(
    protocol, cycles, make_virtual_bus, open_motor_bus, capsys
):
    """Per reply: 5 % dropped, 5 % with a byte damaged; per request: 1 % stalled 50 ms. A
    Feetech sync read of 6 servos has 6 replies to lose, a Dynamixel fast sync read one."""
    faults = Faults(drop=0.05, corrupt=0.05, stall=0.01, stall_s=0.05, seed=1)
    virtual = make_virtual_bus(protocol, dict.fromkeys(IDS, MODEL[protocol]), faults=faults)
    bus = open_motor_bus(virtual, RUNTIME)
    counts = sync_read_under_faults(virtual, bus, cycles, seed=2)
    with capsys.disabled():
        print(f"\n{protocol}: {counts}")
    assert counts["wrong"] == 0, counts
    assert counts["timeouts"] > 0 and counts["corrupt"] > 0
    assert counts["ok"] + counts["stale"] == 6 * (cycles - counts["bus_errors"])


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_late_replies_do_not_poison_later_transactions(protocol, make_virtual_bus, open_motor_bus):
    """A third of requests stall 50 ms, so their replies land during later transactions: of
    other sizes (a sync read, a 1-byte register) or from other servos. Each is rejected by its
    size or id; what comes out is a value the servo held, or a BusError."""
    model = MODELS[MODEL[protocol]]
    present, temperature = (model.register(n) for n in ("Present_Position", "Present_Temperature"))
    faults = Faults(stall=0.3, stall_s=0.05, seed=3)
    virtual = make_virtual_bus(protocol, dict.fromkeys(IDS, MODEL[protocol]), faults=faults)
    bus = open_motor_bus(virtual, RUNTIME)
    rng = np.random.default_rng(4)
    recent: deque = deque(maxlen=4)
    operations = [
        lambda: bus.sync_read(present, IDS),
        lambda: {3: bus.read(3, temperature)},
        lambda: {4: bus.read(4, present)},
        lambda: {5: bus.read(5, present)},
    ]
    values_out = errors = 0
    for k in range(40):
        positions = {i: int(rng.integers(0, 4096)) for i in IDS}
        place(virtual, positions)
        recent.append(positions)
        try:
            values = operations[k % 4]()
        except BusError:
            errors += 1
            continue
        for servo_id, value in values.items():
            values_out += 1
            if k % 4 == 1:
                assert value == 30, "a temperature, never a position byte"
            else:
                assert value in [p[servo_id] for p in recent], (k, servo_id, value)
    assert bus.stats.corrupt > 0, "late replies arrived and were rejected"
    assert values_out > 0 and errors > 0
