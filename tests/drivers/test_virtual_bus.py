"""The servo emulator itself: motion at a stepped clock, homing-offset conventions, position
limits, ID changes, malformed packets, and closing its descriptors exactly once."""

from __future__ import annotations

import os
import time

import pytest

from drivers import dynamixel, feetech
from drivers.bus import BusSettings
from drivers.errors import BusTimeout, PacketError
from drivers.tables import MODELS
from drivers.virtual_bus import SPEED_TICKS_PER_S, Faults, VirtualBus

from .support import wait_until


class SteppedClock:
    """A clock the test moves by hand: motion depends on it, not on how fast the test runs."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("protocol", "name"), [("feetech", "sts3215"), ("dynamixel", "xl330-m288")]
)
def test_servos_move_towards_the_goal_at_their_speed(
    protocol, name, make_virtual_bus, open_motor_bus
):
    clock = SteppedClock()
    virtual = make_virtual_bus(protocol, {1: name}, clock=clock)
    model = MODELS[name]
    bus = open_motor_bus(virtual)
    present = model.register("Present_Position")
    assert bus.read(1, present) == 2048
    bus.write(1, model.register("Goal_Position"), 3000)
    clock.now += 0.1
    assert bus.read(1, present) == 2048, "no torque, no motion"
    bus.write(1, model.register("Torque_Enable"), 1)
    clock.now += 0.1
    assert bus.read(1, present) == 2048 + round(0.1 * SPEED_TICKS_PER_S)
    assert bus.read(1, model.register("Moving")) == 1
    clock.now += 1.0
    assert bus.read(1, present) == 3000
    assert bus.read(1, model.register("Moving")) == 0


def test_homing_offsets_follow_each_vendor(make_virtual_bus, open_motor_bus):
    sts, xl = MODELS["sts3215"], MODELS["xl330-m288"]
    feetech_bus = make_virtual_bus("feetech", {1: "sts3215"})
    dxl_bus = make_virtual_bus("dynamixel", {1: "xl330-m288"})
    bus = open_motor_bus(feetech_bus)
    bus.write(1, sts.register("Homing_Offset"), 48)
    assert bus.read(1, sts.register("Present_Position")) == 2000  # present = actual - offset
    bus.write(1, sts.register("Homing_Offset"), 2047)
    assert bus.read(1, sts.register("Present_Position")) == 1  # single-turn: wraps at 4096
    bus.write(1, sts.register("Homing_Offset"), -2047)
    assert bus.read(1, sts.register("Present_Position")) == (2048 + 2047) % 4096
    bus = open_motor_bus(dxl_bus)
    bus.write(1, xl.register("Homing_Offset"), 48)
    assert bus.read(1, xl.register("Present_Position")) == 2096  # present = actual + offset


def test_goals_are_clamped_to_position_limits_except_in_extended_mode(
    make_virtual_bus, open_motor_bus
):
    xl = MODELS["xl430-w250"]
    virtual = make_virtual_bus("dynamixel", {1: "xl430-w250"})
    bus = open_motor_bus(virtual)
    bus.write(1, xl.register("Max_Position_Limit"), 2500)
    bus.write(1, xl.register("Goal_Position"), 4000)
    assert virtual.servo(1).goal == 2500
    bus.write(1, xl.register("Operating_Mode"), 4)
    bus.write(1, xl.register("Goal_Position"), 5000)
    assert virtual.servo(1).goal == 5000


def test_a_new_id_takes_effect_and_the_reply_comes_from_the_old_one(
    make_virtual_bus, open_motor_bus
):
    sts = MODELS["sts3215"]
    virtual = make_virtual_bus("feetech", {1: "sts3215", 2: "sts3215"})
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.05))  # ping(1) must time out
    bus.write(1, sts.register("ID"), 9)  # MotorBus checks the reply comes from servo 1
    assert bus.ping(9) == 777
    assert virtual.servo(9).get("ID") == 9
    with pytest.raises(BusTimeout):
        bus.ping(1)
    assert bus.broadcast_ping(max_servos=2) == {2: 777, 9: 777}


def test_a_malformed_instruction_is_ignored_not_fatal(make_virtual_bus, open_motor_bus):
    virtual = make_virtual_bus("feetech", {1: "sts3215"})
    bus = open_motor_bus(virtual)
    bus.serial.write(feetech.packet(1, feetech.READ))  # a READ without address and size
    bus.serial.write(feetech.packet(1, feetech.SYNC_READ, b"\x38"))
    assert bus.ping(1) == 777, "the emulator still serves"
    assert virtual.requests >= 3


def test_broadcast_write_reaches_every_servo_without_a_reply(make_virtual_bus, open_motor_bus):
    virtual = make_virtual_bus("feetech", {1: "sts3215", 2: "sts3215"})
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.05))
    bus.serial.write(feetech.write(feetech.BROADCAST, 40, b"\x01"))
    assert wait_until(lambda: virtual.servo(1).torque and virtual.servo(2).torque)
    assert bus.serial.read(1) == b"", "a broadcast gets no reply"


def test_stop_after_unplug_leaves_other_descriptors_alone():
    virtual = VirtualBus("feetech", {1: "sts3215"}).start()
    master = virtual.master
    virtual.unplug()
    devnull = os.open(os.devnull, os.O_RDONLY)  # usually gets the master's old number anyway
    if devnull != master:
        os.dup2(devnull, master)  # someone else now owns the master's old number
        os.close(devnull)
    try:
        virtual.stop()
        os.fstat(master)  # raises if stop() closed it a second time
    finally:
        os.close(master)


def test_stop_is_prompt_and_idempotent():
    virtual = VirtualBus("dynamixel", {1: "xl330-m288"}).start()
    t0 = time.perf_counter()
    virtual.stop()
    assert time.perf_counter() - t0 < 0.2
    virtual.stop()


@pytest.mark.parametrize(
    ("protocol", "name", "error"),
    [("feetech", "sts3215", 0x40), ("dynamixel", "xl330-m288", 0x02)],
)
def test_an_unknown_instruction_gets_the_protocols_instruction_error(
    protocol, name, error, make_virtual_bus, open_motor_bus
):
    virtual = make_virtual_bus(protocol, {1: name})
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.05))
    codec = bus.codec
    bus.serial.write(codec.packet(1, 0x7F))
    reply = bus.serial.read(codec.MIN_STATUS)
    status = codec.parse_status(reply)
    assert (status.servo_id, status.error, status.params) == (1, error, b"")
    assert "instruction error" in codec.error_names(status.error)
    bus.serial.write(codec.packet(codec.BROADCAST, 0x7F))
    bus.serial.write(codec.packet(9, 0x7F))  # nobody there
    assert bus.serial.read(1) == b"", "broadcasts and absent servos stay silent"
    bus.serial.write(codec.packet(1, codec.ACTION))  # known: REG_WRITEs are applied at once
    assert codec.parse_status(bus.serial.read(codec.MIN_STATUS)).error == 0


def test_dynamixel_bulk_read_and_bulk_write_from_our_builders(make_virtual_bus, open_motor_bus):
    virtual = make_virtual_bus("dynamixel", {1: "xl430-w250", 2: "xl330-m288"})
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.2))
    xl = MODELS["xl330-m288"]
    goal, led = xl.register("Goal_Position"), xl.register("LED")
    bus.serial.write(
        dynamixel.bulk_write([(1, goal.address, (-7).to_bytes(4, "little", signed=True))])
        + dynamixel.bulk_write([(2, led.address, b"\x01"), (1, led.address, b"\x01")])
    )
    assert wait_until(lambda: virtual.servo(2).get("LED") == 1 == virtual.servo(1).get("LED"))
    assert virtual.servo(1).get("Goal_Position") == -7
    bus.serial.write(dynamixel.bulk_read([(2, 0, 2), (1, goal.address, 4), (5, 0, 2)]))
    first = dynamixel.parse_status(bus.serial.read(dynamixel.MIN_STATUS + 2))
    second = dynamixel.parse_status(bus.serial.read(dynamixel.MIN_STATUS + 4))
    assert (first.servo_id, int.from_bytes(first.params, "little")) == (2, 1200)
    assert (second.servo_id, dynamixel.decode(second.params, goal)) == (1, -7)
    assert bus.serial.read(1) == b"", "servo 5 is absent: no reply for it"


def test_bulk_packets_parse_back_and_refuse_damage():
    entries = [(1, 132, 4), (3, 0, 2)]
    _, inst, params = dynamixel.parse(dynamixel.bulk_read(entries))
    assert inst == dynamixel.BULK_READ and dynamixel.bulk_read_entries(params) == entries
    writes = [(1, 116, b"\x01\x02\x03\x04"), (2, 65, b"\x01")]
    _, inst, params = dynamixel.parse(dynamixel.bulk_write(writes))
    assert inst == dynamixel.BULK_WRITE and dynamixel.bulk_write_entries(params) == writes
    with pytest.raises(PacketError):
        dynamixel.bulk_read_entries(params[:-1])
    with pytest.raises(PacketError):
        dynamixel.bulk_write_entries(params[:-1])


def test_a_stall_delays_a_whole_request_once(make_virtual_bus, open_motor_bus):
    sts = MODELS["sts3215"]
    virtual = make_virtual_bus(
        "feetech", dict.fromkeys([1, 2, 3], "sts3215"), faults=Faults(stall=1.0, stall_s=0.05)
    )
    present = sts.register("Present_Position")
    impatient = open_motor_bus(virtual, BusSettings(timeout_s=0.02, retries=0))
    with pytest.raises(BusTimeout):
        impatient.read(1, present)
    impatient.close()
    time.sleep(0.06)  # let the stalled reply land (a new port starts empty anyway)
    bus = open_motor_bus(virtual, BusSettings(timeout_s=0.5, retries=0))
    t0 = time.perf_counter()
    assert bus.sync_read(present, [1, 2, 3]) == dict.fromkeys([1, 2, 3], 2048)
    elapsed = time.perf_counter() - t0
    # per request, not per reply: three replies stalled once, not three times (0.15 s)
    assert 0.05 <= elapsed < 0.14, elapsed


def test_for_arm_builds_the_koch_followers_mixed_servos():
    from drivers.arm import KOCH, SO100

    koch = VirtualBus.for_arm(KOCH)
    so100 = VirtualBus.for_arm(SO100)
    try:
        assert koch.protocol == "dynamixel" and so100.protocol == "feetech"
        numbers = [koch.servo(i).get("Model_Number") for i in range(1, 7)]
        assert numbers == [1060, 1060, 1200, 1200, 1200, 1200]
    finally:
        koch.stop()
        so100.stop()
