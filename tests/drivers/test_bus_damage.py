"""Damaged replies never come out of MotorBus as values: the true value or a BusError, whatever
the damage the protocol's check can see (property tests on a scripted port), and the blind spot
of Feetech's 8-bit sum, closed where a register's range allows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import dynamixel, feetech
from drivers.bus import BusSettings, MotorBus
from drivers.errors import BusError, PacketError, ServoError
from drivers.tables import MODELS

from .support import ScriptedPort

SETTINGS = settings(max_examples=200, deadline=None)
RETRIES = 2
# Timeouts on a scripted port are immediate, except where a reply claims to be longer than
# expected (Dynamixel byte stuffing): then the bus waits this long for the rest.
QUICK = BusSettings(timeout_s=0.002, retries=RETRIES, fast_sync_read=False)
STS = MODELS["sts3215"].register("Present_Position")
XL = MODELS["xl330-m288"].register("Present_Position")
IDS = [1, 2, 3]

# How a bus is read, as the runtime does: (protocol, fast sync read, sync read or one READ)
WAYS = [
    ("feetech", False, "sync_read"),
    ("feetech", False, "read"),
    ("dynamixel", False, "sync_read"),
    ("dynamixel", True, "sync_read"),
    ("dynamixel", False, "read"),
]


def reply(protocol: str, fast: bool, values: dict[int, int], size_change: int = 0) -> bytes:
    """What the servos send back (``size_change`` data bytes more or fewer: another register)."""

    def data(codec, reg, v: int) -> bytes:
        raw = codec.encode(v, reg)
        return raw + bytes(size_change) if size_change >= 0 else raw[:size_change]

    if protocol == "feetech":
        return b"".join(feetech.packet(i, 0, data(feetech, STS, v)) for i, v in values.items())
    if fast:
        return dynamixel.fast_sync_reply(
            [(0, i, data(dynamixel, XL, v)) for i, v in values.items()]
        )
    return b"".join(
        dynamixel.status_packet(i, 0, data(dynamixel, XL, v)) for i, v in values.items()
    )


def asked(protocol: str, request: bytes) -> tuple[int, list[int]]:
    """(instruction, ids asked) of a request the bus sent."""
    if protocol == "feetech":
        inst = request[4]
        return inst, list(request[7:-1]) if inst == feetech.SYNC_READ else [request[2]]
    servo_id, inst, params = dynamixel.parse(request)
    sync = inst in (dynamixel.SYNC_READ, dynamixel.FAST_SYNC_READ)
    return inst, list(params[4:]) if sync else [servo_id]


def answer(protocol: str, fast: bool, values: dict[int, int], make=None):
    """A scripted reply to whatever the bus asks (a retry may ask fewer servos): ``make(values
    of the servos asked)`` gives the bytes, the true reply unless told otherwise."""

    def respond(request: bytes) -> bytes:
        inst, ids = asked(protocol, request)
        if inst == feetech.PING:  # PING is 0x01 in both protocols: the bus naming silent servos
            params = b"" if protocol == "feetech" else b"\xb0\x04\x2e"
            return b"".join(
                feetech.packet(i, 0, params)
                if protocol == "feetech"
                else dynamixel.status_packet(i, 0, params)
                for i in ids
            )
        subset = {i: values[i] for i in ids if i in values}
        return make(subset) if make else reply(protocol, fast, subset)

    return respond


def flip_bits(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p // 8] ^= 0x80 >> (p % 8)
    return bytes(out)


@st.composite
def damaged(draw, protocol: str, fast: bool, values: dict[int, int]) -> bytes:
    """One reply as it might arrive, limited to damage the protocol's check must catch:
    Feetech's sum catches any change to one byte; Dynamixel's CRC-16 (0x8005) any 1 to 3 flipped
    bits and any burst within 8 bits. Plus what framing and ids catch: cut short, lost, garbage
    after, another servo's or another size's reply first."""
    true = reply(protocol, fast, values)
    kind = draw(st.sampled_from(["byte", "bits", "burst", "cut", "lost", "after", "stale"]))
    if kind == "byte" or (protocol == "feetech" and kind in ("bits", "burst")):
        at = draw(st.integers(0, len(true) - 1))
        return true[:at] + bytes((true[at] ^ draw(st.integers(1, 255)),)) + true[at + 1 :]
    if kind == "bits":
        positions = draw(
            st.lists(st.integers(0, 8 * len(true) - 1), min_size=1, max_size=3, unique=True)
        )
        return flip_bits(true, positions)
    if kind == "burst":
        start = draw(st.integers(0, 8 * len(true) - 8))
        pattern = draw(st.integers(1, 255))
        return flip_bits(true, [start + k for k in range(8) if pattern >> k & 1])
    if kind == "cut":
        return true[: draw(st.integers(0, len(true) - 1))]
    if kind == "lost":
        return b""
    if kind == "after":
        return true + draw(st.binary(min_size=1, max_size=12))
    # a reply to something else, arriving first: another servo's, or another register size's
    other = {i: v ^ 1 for i, v in values.items()}  # values that differ from the true ones
    if draw(st.booleans()):
        first = next(iter(other))
        other = {first + 10: other.pop(first), **other}
        stale = reply(protocol, fast, other)
    else:
        stale = reply(protocol, fast, other, size_change=draw(st.sampled_from([-1, 1, 2])))
    return stale + true


def true_values(protocol: str, operation: str):
    top = 4095 if protocol == "feetech" else 2**31 - 1  # all of int32: byte-stuffing patterns too
    low = 0 if protocol == "feetech" else -(2**31)
    count = len(IDS) if operation == "sync_read" else 1
    return st.lists(st.integers(low, top), min_size=count, max_size=count).map(
        lambda vs: dict(zip(IDS, vs))
    )


def run(protocol: str, fast: bool, operation: str, script: list, ids: list[int]):
    settings_ = BusSettings(timeout_s=QUICK.timeout_s, retries=RETRIES, fast_sync_read=fast)
    bus = MotorBus(ScriptedPort(script), protocol, settings_)
    reg = STS if protocol == "feetech" else XL
    if operation == "read":
        return bus, {ids[0]: bus.read(ids[0], reg)}
    return bus, bus.sync_read(reg, ids)


@pytest.mark.parametrize(("protocol", "fast", "operation"), WAYS)
@SETTINGS
@given(data=st.data())
def test_damaged_replies_give_the_true_value_or_a_bus_error(protocol, fast, operation, data):
    values = data.draw(true_values(protocol, operation))
    attempts = data.draw(st.integers(1, RETRIES + 2))
    clean_from = data.draw(st.integers(0, attempts))  # attempts from here on are undamaged
    damage = answer(protocol, fast, values, lambda asked: data.draw(damaged(protocol, fast, asked)))
    clean = answer(protocol, fast, values)
    script = [damage] * clean_from + [clean] * (attempts - clean_from + RETRIES + 1)
    try:
        bus, got = run(protocol, fast, operation, script, list(values))
    except BusError:
        assert clean_from > RETRIES, "a clean reply within the retries must be taken"
        return
    assert got == values
    assert bus.stats.cycles <= RETRIES + 1


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_a_reply_from_servos_not_asked_or_of_the_wrong_size_is_never_taken(protocol):
    values = {1: 100, 2: 200}
    script = [
        reply(protocol, False, {5: 100, 6: 200}),  # right size, servos not asked
        reply(protocol, False, values, size_change=1),  # one byte too many each
        answer(protocol, False, values),
    ]
    bus, got = run(protocol, False, "sync_read", script, [1, 2])
    assert got == values
    assert (bus.stats.corrupt, bus.stats.retries) == (2, 2)


def test_feetech_keeps_the_intact_replies_and_asks_again_only_for_the_rest():
    values = {1: 10, 2: 20, 3: 30}
    lost_two = reply("feetech", False, {1: 10, 3: 30})  # servo 2's reply lost on the way
    port = ScriptedPort([lost_two, answer("feetech", False, values)])
    bus = MotorBus(port, "feetech", QUICK)
    assert bus.sync_read(STS, [1, 2, 3]) == values
    assert port.requests[1] == feetech.sync_read(STS.address, STS.size, [2])
    assert bus.stats.per_servo[2]["timeouts"] == 1 and bus.stats.per_servo[1]["timeouts"] == 0


def test_the_feetech_sum_misses_compensating_errors_and_the_range_check_closes_some():
    """Known limit: two bytes changed by +d and -d keep an 8-bit sum. Present_Position's range
    (0..4095, single-turn) rejects those that leave it, as a damaged reply, and retries."""
    good = feetech.packet(1, 0, feetech.encode(1000, STS))  # 1000 = e8 03
    bad = bytearray(good)
    bad[5] -= 0x10  # low byte e8 -> d8
    bad[6] += 0x10  # high byte 03 -> 13: 0x13d8 = 5080, same sum
    assert feetech.parse_status(bytes(bad)).params == bytes((0xD8, 0x13)), "the sum is fooled"
    bus, got = run("feetech", False, "read", [bytes(bad), good], [1])
    assert got == {1: 1000}
    assert bus.stats.corrupt == 1 and bus.stats.per_servo[1]["corrupt"] == 1
    with pytest.raises(PacketError, match="Present_Position = 5080, outside 0..4095"):
        run("feetech", False, "read", [bytes(bad)] * 3, [1])
    # within the range, the same kind of damage cannot be told from a true value
    within = bytearray(good)
    within[5] -= 1
    within[6] += 1  # 0x04e7 = 1255
    assert run("feetech", False, "read", [bytes(within)], [1])[1] == {1: 1255}


def test_feetech_keeps_nothing_from_replies_that_belong_to_something_else():
    # intact replies from the servos asked, but out of turn: late answers, not this request's
    values = {1: 10, 2: 20, 3: 30}
    port = ScriptedPort(
        [reply("feetech", False, {2: 99, 1: 98, 3: 97}), answer("feetech", False, values)]
    )
    bus = MotorBus(port, "feetech", QUICK)
    assert bus.sync_read(STS, [1, 2, 3]) == values
    assert port.requests[1] == port.requests[0], "everything asked again"


def test_an_out_of_range_value_in_a_sync_read_is_retried_and_pinned_on_its_servo():
    values = {1: 10, 2: 20, 3: 30}
    good = reply("feetech", False, values)
    payload = feetech.packet(2, 0, (4096).to_bytes(2, "little"))  # valid sum, impossible value
    bad = good[:8] + payload + good[16:]
    bus, got = run("feetech", False, "sync_read", [bad, answer("feetech", False, values)], IDS)
    assert got == values
    assert bus.stats.per_servo[2]["corrupt"] == 1 and bus.stats.per_servo[1]["corrupt"] == 0


@pytest.mark.parametrize(
    ("protocol", "error", "name"),
    [("feetech", 0x40, "instruction error"), ("dynamixel", 0x02, "instruction error")],
)
def test_a_servo_refusing_the_instruction_is_a_servo_error_not_a_value(protocol, error, name):
    refusal = (
        feetech.packet(1, error) if protocol == "feetech" else dynamixel.status_packet(1, error)
    )
    with pytest.raises(ServoError, match=name) as caught:
        run(protocol, False, "read", [refusal], [1])
    assert caught.value.servo_id == 1


@pytest.mark.parametrize("protocol", ["feetech", "dynamixel"])
def test_bytes_waiting_before_a_request_are_discarded(protocol):
    # a late reply to an earlier request, already in the buffer when the next one is sent
    port = ScriptedPort([reply(protocol, False, {1: 1000})])
    port.pending += reply(protocol, False, {1: 999})
    bus = MotorBus(port, protocol, QUICK)
    assert bus.read(1, STS if protocol == "feetech" else XL) == 1000
    assert bus.stats.retries == 0
