"""MotorBus on a real pty and pyserial against the emulator: transactions, retries under
injected faults, typed errors that name the servo and register, and a port that vanishes."""

from __future__ import annotations

import json
import threading
import time

import pytest

from drivers.bus import BusSettings, MotorBus
from drivers.errors import BusTimeout, PacketError, PortGone, ServoError
from drivers.tables import MODELS
from drivers.virtual_bus import Faults

from .support import FAST, wait_until

MODEL = {"feetech": "sts3215", "dynamixel": "xl330-m288"}
PROTOCOLS = pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])


def registers(protocol: str):
    model = MODELS[MODEL[protocol]]
    return model, model.register("Present_Position"), model.register("Goal_Position")


def place(virtual, positions: dict[int, int]) -> None:
    """Puts emulated servos (torque off) at raw positions, so reads have distinct answers."""
    for servo_id, ticks in positions.items():
        servo = virtual.servo(servo_id)
        servo.actual = servo.goal = float(ticks)


# --- transactions -------------------------------------------------------------------------------


@PROTOCOLS
def test_ping_read_write_sync_read_sync_write(protocol, make_virtual_bus, open_motor_bus):
    ids = [1, 2, 3]
    model, present, goal = registers(protocol)
    virtual = make_virtual_bus(protocol, dict.fromkeys(ids, MODEL[protocol]))
    place(virtual, {1: 1000, 2: 2000, 3: 3000})
    bus = open_motor_bus(virtual)

    assert bus.ping(2) == model.model_number
    assert bus.identify(3) is model
    assert bus.read(1, present) == 1000
    assert bus.sync_read(present, ids) == {1: 1000, 2: 2000, 3: 3000}
    assert bus.sync_read(present, [3, 1]) == {3: 3000, 1: 1000}

    bus.write(2, goal, 1234)
    assert virtual.servo(2).get("Goal_Position") == 1234
    bus.sync_write(goal, {1: 111, 3: 333})
    assert wait_until(lambda: bus.sync_read(goal, ids) == {1: 111, 2: 1234, 3: 333})
    assert bus.broadcast_ping(max_servos=3) == dict.fromkeys(ids, model.model_number)
    assert bus.stats.failures == 0 and bus.stats.cycles > 0


def test_dynamixel_plain_sync_read_matches_fast_sync_read(make_virtual_bus, open_motor_bus):
    _, present, _ = registers("dynamixel")
    virtual = make_virtual_bus("dynamixel", dict.fromkeys([1, 2, 3], "xl330-m288"))
    place(virtual, {1: -100, 2: 70000, 3: 5})  # signed and multi-turn values
    fast = open_motor_bus(virtual, BusSettings(timeout_s=0.5, fast_sync_read=True))
    assert fast.sync_read(present, [1, 2, 3]) == {1: -100, 2: 70000, 3: 5}
    fast.close()
    plain = open_motor_bus(virtual, BusSettings(timeout_s=0.5, fast_sync_read=False))
    assert plain.sync_read(present, [1, 2, 3]) == {1: -100, 2: 70000, 3: 5}


@pytest.mark.parametrize("fast", [True, False])
def test_dynamixel_values_needing_byte_stuffing_cross_the_bus(
    fast, make_virtual_bus, open_motor_bus
):
    _, _, goal = registers("dynamixel")
    virtual = make_virtual_bus("dynamixel", {1: "xl330-m288", 2: "xl330-m288"})
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.5, fast_sync_read=fast))
    awkward = {
        1: int.from_bytes(bytes.fromhex("FF FF FD 00"), "little"),
        2: int.from_bytes(bytes.fromhex("FD FF FF FD"), "little", signed=True),
    }
    for servo_id, value in awkward.items():
        bus.write(servo_id, goal, value)  # stuffed on send (the emulator unstuffs)
        assert virtual.servo(servo_id).get("Goal_Position") == value
    assert bus.read(1, goal) == awkward[1]  # the reply is stuffed, so longer than expected
    assert bus.sync_read(goal, [1, 2]) == awkward
    assert bus.stats.retries == 0


# --- retries under faults -----------------------------------------------------------------------


@PROTOCOLS
def test_reads_go_on_through_dropped_and_corrupted_replies(
    protocol, make_virtual_bus, open_motor_bus
):
    ids = [1, 2]
    _, present, _ = registers(protocol)
    virtual = make_virtual_bus(
        protocol,
        dict.fromkeys(ids, MODEL[protocol]),
        faults=Faults(drop=0.2, corrupt=0.2, seed=7),
    )
    place(virtual, {1: 1500, 2: 2500})
    # Each reply fails with p = 0.36; a Feetech sync read needs both of its replies.
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.01, retries=12))
    for _ in range(20):
        assert bus.sync_read(present, ids) == {1: 1500, 2: 2500}
        assert bus.read(2, present) == 2500
    stats = bus.stats
    assert stats.failures == 0
    assert stats.retries > 0 and stats.timeouts > 0 and stats.corrupt > 0
    assert stats.cycles == 40 + stats.retries
    summary = stats.summary()
    assert summary["retries"] == stats.retries and summary["latency_us_p50"] > 0


def test_dynamixel_corruption_is_retried_at_once_not_after_a_timeout(
    make_virtual_bus, open_motor_bus
):
    _, present, _ = registers("dynamixel")
    virtual = make_virtual_bus("dynamixel", {1: "xl330-m288"}, faults=Faults(corrupt=0.5, seed=1))
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.2, retries=20))
    t0 = time.perf_counter()
    for _ in range(10):
        assert bus.read(1, present) == 2048
    assert bus.stats.corrupt > 0
    # a corrupted reply that waited out its timeout would cost 0.2 s each
    assert time.perf_counter() - t0 < 0.2 + 0.02 * bus.stats.corrupt


@PROTOCOLS
def test_no_replies_at_all_raise_a_timeout_naming_register_and_servos(
    protocol, make_virtual_bus, open_motor_bus
):
    _, present, _ = registers(protocol)
    virtual = make_virtual_bus(protocol, dict.fromkeys([1, 2], MODEL[protocol]))
    virtual.faults = Faults(drop=1.0)
    bus = open_motor_bus(virtual, FAST)
    with pytest.raises(BusTimeout) as caught:
        bus.sync_read(present, [1, 2])
    message = str(caught.value)
    assert "Present_Position" in message and "[1, 2]" in message
    assert "no answer from servo(s) [1, 2]" in message
    assert "after 3 attempts" in message
    assert bus.stats.failures == 1 and bus.stats.retries == 2

    with pytest.raises(BusTimeout, match="read Present_Position from servo 2"):
        bus.read(2, present)


def test_corruption_every_time_raises_a_packet_error_at_once(make_virtual_bus, open_motor_bus):
    _, present, _ = registers("feetech")
    virtual = make_virtual_bus("feetech", {4: "sts3215"}, faults=Faults(corrupt=1.0, seed=3))
    bus = open_motor_bus(virtual)  # 0.5 s timeout: never waited out, as damage shows at once
    t0 = time.perf_counter()
    with pytest.raises(PacketError, match="read Present_Position from servo 4"):
        bus.read(4, present)  # a ChecksumError, or a length that does not match
    assert time.perf_counter() - t0 < 0.25
    stats = bus.stats
    assert (stats.corrupt, stats.timeouts, stats.failures) == (3, 0, 1)


@PROTOCOLS
def test_late_replies_are_retried_and_do_not_leak_into_later_requests(
    protocol, make_virtual_bus, open_motor_bus
):
    # A late reply to one request arrives while the bus waits for the next one's. Replies carry
    # no sequence number, so the bus can only tell them apart by servo id and size: here the
    # read's reply (Feetech: 1 byte; Dynamixel: 4 bytes) differs from the ping's (PING plus a
    # 2-byte READ; 3 bytes). Before the check, a Dynamixel ping returned a stale position.
    model = MODELS[MODEL[protocol]]
    reg = model.register("Present_Temperature" if protocol == "feetech" else "Present_Position")
    virtual = make_virtual_bus(
        protocol, {1: MODEL[protocol]}, faults=Faults(late=0.3, late_s=0.015, seed=5)
    )
    place(virtual, {1: 1234})
    expected = 30 if protocol == "feetech" else 1234
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.01, retries=10))
    for _ in range(10):
        assert bus.read(1, reg) == expected
        assert bus.ping(1) == model.model_number
    assert bus.stats.timeouts > 0 and bus.stats.failures == 0


@PROTOCOLS
def test_an_absent_servo_is_named(protocol, make_virtual_bus, open_motor_bus):
    _, present, _ = registers(protocol)
    virtual = make_virtual_bus(protocol, dict.fromkeys([1, 2, 3], MODEL[protocol]))
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.05))
    with pytest.raises(BusTimeout, match=r"no answer from servo\(s\) \[7\]"):
        bus.sync_read(present, [1, 7, 2])
    with pytest.raises(BusTimeout, match="ping servo 9"):
        bus.ping(9)
    assert bus.sync_read(present, [1, 2]) == {1: 2048, 2: 2048}, "the bus still works"


def test_dynamixel_eeprom_write_with_torque_on_is_an_access_error(make_virtual_bus, open_motor_bus):
    model = MODELS["xl430-w250"]
    virtual = make_virtual_bus("dynamixel", {1: "xl430-w250"})
    bus = open_motor_bus(virtual)
    bus.write(1, model.register("Homing_Offset"), -300)  # torque off: accepted
    bus.write(1, model.register("Torque_Enable"), 1)
    with pytest.raises(ServoError, match="access error") as caught:
        bus.write(1, model.register("Homing_Offset"), 5)
    error = caught.value
    assert (error.servo_id, error.code) == (1, 7)
    assert "Homing_Offset" in str(error) and "servo 1" in str(error)
    assert virtual.servo(1).get("Homing_Offset") == -300
    assert bus.stats.servo_errors == 1


# --- the port goes away -------------------------------------------------------------------------


def test_a_missing_port_is_port_gone():
    with pytest.raises(PortGone, match="cannot open /dev/no-such-port"):
        MotorBus("/dev/no-such-port", "feetech").open()
    with pytest.raises(ValueError, match="protocol"):
        MotorBus("/dev/no-such-port", "herkulex")


def test_a_closed_bus_says_so(make_virtual_bus):
    virtual = make_virtual_bus("feetech", {1: "sts3215"})
    bus = MotorBus(virtual.port, "feetech", FAST)
    with pytest.raises(PortGone, match="not open"):
        bus.ping(1)


@PROTOCOLS
@pytest.mark.parametrize("operation", ["read", "write", "sync_read", "sync_write", "ping"])
def test_unplugged_port_raises_port_gone_at_once(
    protocol, operation, make_virtual_bus, open_motor_bus
):
    _, present, goal = registers(protocol)
    virtual = make_virtual_bus(protocol, {1: MODEL[protocol]})
    # a long timeout: PortGone must come from the port failing, not from waiting it out
    bus = open_motor_bus(virtual, BusSettings(timeout_s=2.0))
    assert bus.read(1, present) == 2048
    virtual.unplug()
    calls = {
        "read": lambda: bus.read(1, present),
        "write": lambda: bus.write(1, goal, 100),
        "sync_read": lambda: bus.sync_read(present, [1]),
        "sync_write": lambda: bus.sync_write(goal, {1: 100}),
        "ping": lambda: bus.ping(1),
    }
    t0 = time.perf_counter()
    with pytest.raises(PortGone, match="unplugged"):
        calls[operation]()
    assert time.perf_counter() - t0 < 0.25


@PROTOCOLS
def test_unplugging_mid_run_stops_a_read_loop_quickly(protocol, make_virtual_bus, open_motor_bus):
    _, present, goal = registers(protocol)
    ids = [1, 2, 3]
    virtual = make_virtual_bus(protocol, dict.fromkeys(ids, MODEL[protocol]))
    bus = open_motor_bus(virtual, BusSettings(timeout_s=2.0))
    outcome: dict = {}

    def loop():
        cycles = 0
        try:
            while True:
                bus.sync_read(present, ids)
                bus.sync_write(goal, dict.fromkeys(ids, 2000))
                cycles += 1
        except Exception as e:  # noqa: BLE001 - the test inspects what ended the loop
            outcome["error"], outcome["t"], outcome["cycles"] = e, time.perf_counter(), cycles

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.1)
    t_unplug = time.perf_counter()
    virtual.unplug()
    thread.join(timeout=3.0)
    assert not thread.is_alive(), "the loop hangs after the port vanished"
    assert isinstance(outcome["error"], PortGone), outcome["error"]
    assert outcome["t"] - t_unplug < 0.25
    assert outcome["cycles"] > 10


# --- statistics ---------------------------------------------------------------------------------


def test_stats_per_servo_and_consecutive_failures(make_virtual_bus, open_motor_bus):
    _, present, _ = registers("feetech")
    virtual = make_virtual_bus("feetech", {1: "sts3215", 2: "sts3215"})
    bus = open_motor_bus(virtual, FAST)
    with pytest.raises(BusTimeout):
        bus.sync_read(present, [1, 7, 2])  # 7 is absent: its reply is the one that never comes
    with pytest.raises(BusTimeout):
        bus.read(7, present)
    stats = bus.stats
    assert stats.consecutive_failures == 2 and stats.failures == 2
    assert stats.per_servo[7] == {"timeouts": 6, "corrupt": 0, "failures": 2}
    assert stats.per_servo[1] == stats.per_servo[2] == {"timeouts": 0, "corrupt": 0, "failures": 0}
    assert "servo 7" in stats.last_error
    assert bus.sync_read(present, [1, 2]) == {1: 2048, 2: 2048}
    assert stats.consecutive_failures == 0, "a success resets it"
    assert stats.failures == 2
    assert set(stats.per_servo) == {1, 2, 7}, "only the ids addressed"


def test_corrupt_replies_are_pinned_on_their_servo(make_virtual_bus, open_motor_bus):
    _, present, _ = registers("feetech")
    virtual = make_virtual_bus("feetech", {4: "sts3215"}, faults=Faults(corrupt=1.0, seed=3))
    bus = open_motor_bus(virtual)
    with pytest.raises(PacketError) as caught:
        bus.read(4, present)
    assert caught.value.servo_id == 4
    assert bus.stats.per_servo[4] == {"timeouts": 0, "corrupt": 3, "failures": 1}


@PROTOCOLS
def test_summary_is_plain_json(protocol, make_virtual_bus, open_motor_bus):
    _, present, _ = registers(protocol)
    virtual = make_virtual_bus(protocol, {1: MODEL[protocol]})
    bus = open_motor_bus(virtual, FAST)
    empty = bus.stats.summary()
    assert json.loads(json.dumps(empty, allow_nan=False)) == empty
    assert empty["latency_us_p50"] == 0.0 and empty["per_servo"] == {}
    bus.read(1, present)
    with pytest.raises(BusTimeout):
        bus.read(3, present)
    summary = bus.stats.summary()
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["per_servo"] == {
        "1": {"timeouts": 0, "corrupt": 0, "failures": 0},
        "3": {"timeouts": 3, "corrupt": 0, "failures": 1},
    }
    assert summary["consecutive_failures"] == 1 and summary["failures"] == 1
    assert {"cycles", "retries", "timeouts", "corrupt", "servo_errors", "last_error"} <= set(
        summary
    )


def test_values_outside_a_registers_range_are_not_written(make_virtual_bus, open_motor_bus):
    # found by an attacker: range_max 60000 was written to servo 6 and read back
    sts = MODELS["sts3215"]
    virtual = make_virtual_bus("feetech", {6: "sts3215"})
    bus = open_motor_bus(virtual)
    limit = sts.register("Max_Position_Limit")
    with pytest.raises(
        ValueError, match="Max_Position_Limit = 60000 for servo 6 is outside 0..4095"
    ):
        bus.write(6, limit, 60000)
    with pytest.raises(ValueError, match="Homing_Offset = 2048 for servo 6"):
        bus.sync_write(sts.register("Homing_Offset"), {6: 2048})
    assert virtual.requests == 0
    assert bus.read(6, limit) == 4095
