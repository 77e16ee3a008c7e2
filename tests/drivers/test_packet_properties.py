"""Property tests: value codecs and packets round-trip; damaged status packets never parse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import dynamixel, feetech
from drivers.errors import PacketError
from drivers.tables import MODELS

SETTINGS = settings(max_examples=200, deadline=None)
STS_REGISTERS = list(MODELS["sts3215"].registers.values())
XL_REGISTERS = list(MODELS["xl330-m288"].registers.values())
SIGN_MAGNITUDE = [r for r in STS_REGISTERS if r.sign_bit is not None]
TWOS_COMPLEMENT = [r for r in XL_REGISTERS if r.signed]

# Payloads rich in the byte runs that stuffing has to get right.
AWKWARD = [b"\xff\xff\xfd", b"\xff\xff\xfd\xfd", b"\xff\xff\xff\xfd", b"\xff", b"\xfd", b"\xff\xfd"]
payloads = st.lists(st.one_of(st.binary(max_size=6), st.sampled_from(AWKWARD)), max_size=12).map(
    b"".join
)


def test_the_tables_have_signed_registers_to_test():
    assert {r.name for r in SIGN_MAGNITUDE} >= {"Homing_Offset", "Present_Position"}
    assert {r.name for r in TWOS_COMPLEMENT} >= {"Homing_Offset", "Present_Position"}


# --- value codecs -------------------------------------------------------------------------------


@SETTINGS
@given(st.sampled_from(SIGN_MAGNITUDE), st.data())
def test_feetech_sign_magnitude_round_trips(reg, data):
    limit = (1 << reg.sign_bit) - 1
    value = data.draw(st.integers(-limit, limit))
    raw = feetech.encode(value, reg)
    assert len(raw) == reg.size
    assert feetech.decode(raw, reg) == value
    magnitude = int.from_bytes(raw, "little") & limit
    assert magnitude == abs(value), "sign-magnitude, not two's complement"
    assert bool(int.from_bytes(raw, "little") >> reg.sign_bit) == (value < 0)


@SETTINGS
@given(st.sampled_from(SIGN_MAGNITUDE), st.integers(0, 1 << 20), st.booleans())
def test_feetech_sign_magnitude_refuses_what_does_not_fit(reg, excess, negative):
    value = (1 << reg.sign_bit) + excess
    with pytest.raises(ValueError, match=reg.name):
        feetech.encode(-value if negative else value, reg)


@SETTINGS
@given(st.sampled_from([r for r in STS_REGISTERS if r.sign_bit is None]), st.data())
def test_feetech_unsigned_round_trips_and_refuses_negatives(reg, data):
    value = data.draw(st.integers(0, (1 << (8 * reg.size)) - 1))
    assert feetech.decode(feetech.encode(value, reg), reg) == value
    with pytest.raises(ValueError):
        feetech.encode(-1 - value, reg)


@SETTINGS
@given(st.sampled_from(TWOS_COMPLEMENT), st.data())
def test_dynamixel_twos_complement_round_trips(reg, data):
    bits = 8 * reg.size
    value = data.draw(st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1))
    raw = dynamixel.encode(value, reg)
    assert raw == value.to_bytes(reg.size, "little", signed=True)
    assert dynamixel.decode(raw, reg) == value
    with pytest.raises(ValueError):
        dynamixel.encode(value + (1 << bits) if value >= 0 else value - (1 << bits), reg)


@SETTINGS
@given(st.sampled_from(XL_REGISTERS), st.data())
def test_dynamixel_every_byte_pattern_decodes_and_reencodes(reg, data):
    raw = data.draw(st.binary(min_size=reg.size, max_size=reg.size))
    assert dynamixel.encode(dynamixel.decode(raw, reg), reg) == raw


# --- packets ------------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(0, 0xFD), st.integers(0, 255), st.binary(max_size=250))
def test_feetech_packet_parses_back(servo_id, inst, params):
    packet = feetech.packet(servo_id, inst, params)
    assert len(packet) == feetech.status_length(len(params))
    assert feetech.parse_status(packet) == feetech.Status(servo_id, inst, params)
    assert feetech.find_packet(b"\x00\xff" + packet + b"\xff") == (packet, 2 + len(packet))


@SETTINGS
@given(st.integers(0, 0xFE), st.integers(0, 255), payloads)
def test_dynamixel_packet_parses_back(servo_id, inst, params):
    packet = dynamixel.packet(servo_id, inst, params)
    assert dynamixel.parse(packet) == (servo_id, inst, params)
    assert dynamixel.packet_length(packet) == len(packet)
    assert dynamixel.find_packet(b"\xfd\x00" + packet + b"\xff\xff") == (packet, 2 + len(packet))
    stuffed = packet[7:-2]
    # after stuffing, every FF FF FD inside is followed by the added FD
    for i in range(len(stuffed) - 2):
        if stuffed[i : i + 3] == b"\xff\xff\xfd":
            assert stuffed[i + 3 : i + 4] == b"\xfd"


@SETTINGS
@given(payloads)
def test_unstuff_inverts_stuff(raw):
    assert dynamixel.unstuff(dynamixel.stuff(raw)) == raw


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 0xFD), st.binary(max_size=8)), min_size=1, max_size=6))
def test_feetech_back_to_back_statuses_split(replies):
    size = len(replies[0][1])
    replies = [(i, (data * 8)[:size] if data else bytes(size)) for i, data in replies]
    buf = b"".join(feetech.packet(i, 0, data) for i, data in replies)
    statuses = feetech.split_statuses(buf, len(replies), size)
    assert [(s.servo_id, s.params) for s in statuses] == replies


# --- damage is detected, never mis-parsed -------------------------------------------------------


@st.composite
def damaged(draw, build, header_len):
    """(intact packet, damaged copy): one byte after the header flipped, or the tail cut off."""
    packet = draw(build)
    if draw(st.booleans()):
        index = draw(st.integers(header_len, len(packet) - 1))
        flip = draw(st.integers(1, 255))
        bad = bytearray(packet)
        bad[index] ^= flip
        return packet, bytes(bad)
    return packet, packet[: draw(st.integers(0, len(packet) - 1))]


feetech_statuses = st.builds(
    feetech.packet, st.integers(0, 0xFD), st.integers(0, 0xFF), st.binary(max_size=16)
)
dynamixel_statuses = st.builds(
    dynamixel.status_packet, st.integers(0, 0xFC), st.integers(0, 0xFF), payloads
)


@SETTINGS
@given(damaged(feetech_statuses, header_len=2))
def test_feetech_damage_is_detected(pair):
    packet, bad = pair
    assert feetech.parse_status(packet)
    with pytest.raises(PacketError):  # ChecksumError is a PacketError
        feetech.parse_status(bad)


@SETTINGS
@given(damaged(dynamixel_statuses, header_len=4))
def test_dynamixel_damage_is_detected(pair):
    packet, bad = pair
    assert dynamixel.parse_status(packet)
    with pytest.raises(PacketError):
        dynamixel.parse_status(bad)
