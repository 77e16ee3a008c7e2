"""Packet encode/decode against the worked examples in shared/notes/robots.md section 4."""

from __future__ import annotations

import pytest

from drivers import dynamixel, feetech
from drivers.errors import ChecksumError, PacketError
from drivers.tables import MODELS

STS = MODELS["sts3215"]
XL = MODELS["xl330-m288"]


def hex_bytes(text: str) -> bytes:
    return bytes.fromhex(text)


# --- Feetech ------------------------------------------------------------------------------------


def test_feetech_ping_and_its_status():
    assert feetech.ping(1) == hex_bytes("FF FF 01 02 01 FB")
    reply = hex_bytes("FF FF 01 02 00 FC")
    assert feetech.parse_status(reply) == feetech.Status(servo_id=1, error=0, params=b"")
    assert feetech.packet(1, 0) == reply  # the emulator's status encoder


def test_feetech_read_and_its_status_value_1304():
    request = feetech.read(1, 0x38, 2)
    assert request == hex_bytes("FF FF 01 04 02 38 02 BE")
    reply = hex_bytes("FF FF 01 04 00 18 05 DD")
    status = feetech.parse_status(reply)
    assert (status.servo_id, status.error, status.params) == (1, 0, b"\x18\x05")
    assert feetech.decode(status.params, STS.register("Present_Position")) == 1304
    assert feetech.packet(1, 0, feetech.encode(1304, STS.register("Present_Position"))) == reply


def test_feetech_sync_read_of_present_position_ids_1_to_6():
    reg = STS.register("Present_Position")
    assert feetech.sync_read(reg.address, reg.size, [1, 2, 3, 4, 5, 6]) == hex_bytes(
        "FF FF FE 0A 82 38 02 01 02 03 04 05 06 26"
    )


def test_feetech_sync_write_layout():
    # FF FF FE LEN 83 addr L (id d1 d2)*N CHK, LEN = (L+1)N+4
    packet = feetech.sync_write(42, 2, {1: b"\x00\x08", 2: b"\x01\x02"})
    assert packet[:5] == hex_bytes("FF FF FE 0A 83")
    assert packet[5:-1] == hex_bytes("2A 02 01 00 08 02 01 02")
    assert packet[-1] == ~sum(packet[2:-1]) & 0xFF
    with pytest.raises(ValueError, match="servo 2: 1 bytes for a 2-byte register"):
        feetech.sync_write(42, 2, {1: b"\x00\x08", 2: b"\x01"})


def test_feetech_status_errors_are_typed():
    good = hex_bytes("FF FF 01 04 00 18 05 DD")
    with pytest.raises(ChecksumError):
        feetech.parse_status(good[:-1] + b"\xde")
    with pytest.raises(PacketError, match="length"):
        feetech.parse_status(good[:-1])
    with pytest.raises(PacketError, match="not a status packet"):
        feetech.parse_status(b"\xff\xfe" + good[2:])


def test_feetech_error_flags_are_named():
    assert feetech.error_names(0x20 | 0x04) == ("overheat", "overload")
    assert feetech.error_names(0) == ()


def test_feetech_stream_framing_skips_garbage_and_damaged_packets():
    good = hex_bytes("FF FF 01 04 00 18 05 DD")
    damaged = hex_bytes("FF FF 02 04 00 18 05 00")
    stream = bytearray(b"\x00\x13" + damaged + good + good[:3])
    found = []
    while True:
        packet, drop = feetech.find_packet(stream)
        del stream[:drop]
        if packet is None:
            break
        found.append(packet)
    assert found == [good]
    assert bytes(stream) == good[:3], "an incomplete packet waits for more bytes"


# --- Dynamixel Protocol 2.0 ---------------------------------------------------------------------


def test_dynamixel_ping_and_its_status():
    assert dynamixel.ping(1) == hex_bytes("FF FF FD 00 01 03 00 01 19 4E")
    reply = hex_bytes("FF FF FD 00 01 07 00 55 00 06 04 26 65 5D")
    status = dynamixel.parse_status(reply)
    assert (status.servo_id, status.error, status.params) == (1, 0, hex_bytes("06 04 26"))
    assert int.from_bytes(status.params[:2], "little") == 1030  # model number, then firmware
    assert dynamixel.status_packet(1, 0, hex_bytes("06 04 26")) == reply


def test_dynamixel_sync_read_of_present_position_ids_1_and_2():
    reg = XL.register("Present_Position")
    assert (reg.address, reg.size) == (132, 4)
    assert dynamixel.sync_read(reg.address, reg.size, [1, 2]) == hex_bytes(
        "FF FF FD 00 FE 09 00 82 84 00 04 00 01 02 CE FA"
    )


def test_dynamixel_status_of_id_1_value_166():
    reply = hex_bytes("FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0")
    status = dynamixel.parse_status(reply)
    assert (status.servo_id, status.error) == (1, 0)
    assert dynamixel.decode(status.params, XL.register("Present_Position")) == 166
    assert dynamixel.status_packet(
        1, 0, dynamixel.encode(166, XL.register("Present_Position"))
    ) == (reply)


def test_dynamixel_sync_write_goal_150_and_170():
    reg = XL.register("Goal_Position")
    data = {1: dynamixel.encode(150, reg), 2: dynamixel.encode(170, reg)}
    assert dynamixel.sync_write(reg.address, reg.size, data) == hex_bytes(
        "FF FF FD 00 FE 11 00 83 74 00 04 00 01 96 00 00 00 02 AA 00 00 00 82 87"
    )


def test_dynamixel_crc_is_crc16_0x8005():
    assert dynamixel.crc16(b"123456789") == 0xFEE8  # CRC-16/BUYPASS check value
    packet = dynamixel.ping(1)
    assert dynamixel.crc16(packet[:-2]).to_bytes(2, "little") == packet[-2:]


def test_dynamixel_status_errors_are_typed():
    good = hex_bytes("FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0")
    with pytest.raises(ChecksumError):
        dynamixel.parse_status(good[:9] + b"\xa7" + good[10:])
    with pytest.raises(PacketError, match="length"):
        dynamixel.parse_status(good[:-1])
    with pytest.raises(PacketError, match="not a status packet"):
        dynamixel.parse_status(dynamixel.ping(1))


def test_dynamixel_error_numbers_and_alert_are_named():
    assert dynamixel.error_names(7) == ("access error",)
    assert dynamixel.error_names(0x80 | 4) == ("hardware alert", "data range error")
    assert dynamixel.error_names(0) == ()


# --- byte stuffing ------------------------------------------------------------------------------


def test_stuffing_adds_an_fd_after_every_ff_ff_fd():
    assert dynamixel.stuff(hex_bytes("FF FF FD")) == hex_bytes("FF FF FD FD")
    assert dynamixel.stuff(hex_bytes("01 FF FF FD 02 FF FF FD")) == hex_bytes(
        "01 FF FF FD FD 02 FF FF FD FD"
    )
    assert dynamixel.stuff(hex_bytes("FF FD FF FF")) == hex_bytes("FF FD FF FF")
    assert dynamixel.unstuff(hex_bytes("FF FF FD FD 00")) == hex_bytes("FF FF FD 00")


def test_a_written_value_containing_ff_ff_fd_is_stuffed_on_send():
    reg = XL.register("Goal_Position")
    value = dynamixel.encode(int.from_bytes(hex_bytes("FF FF FD 00"), "little"), reg)
    packet = dynamixel.write(1, reg.address, value)
    # INST 03, address 74 00, then the value with one FD added; LEN counts the stuffed bytes
    assert packet[7:-2] == hex_bytes("03 74 00 FF FF FD FD 00")
    assert int.from_bytes(packet[5:7], "little") == 8 + 2
    assert dynamixel.parse(packet) == (1, dynamixel.WRITE, hex_bytes("74 00") + value)


def test_unstuffing_is_exact_where_the_sdk_is_lossy():
    # robots.md: dynamixel_sdk turns FF FF FD FF FD FD into FF FF FD FF FD on receive.
    data = hex_bytes("FF FF FD FF FD FD")
    reply = dynamixel.status_packet(3, 0, data)
    assert reply[7:-2] == hex_bytes("55 00 FF FF FD FD FF FD FD")
    assert int.from_bytes(reply[5:7], "little") == 9 + 2
    status = dynamixel.parse_status(reply)
    assert (status.servo_id, status.error, status.params) == (3, 0, data)


@pytest.mark.parametrize(
    "data",
    ["FF FF FD FD", "FF FF FF FD", "FF FF FD FF FF FD", "FD FF FF FD FD FD", "FF FF FD FF FD FD"],
)
def test_unstuff_inverts_stuff_on_awkward_runs(data):
    raw = hex_bytes(data)
    assert dynamixel.unstuff(dynamixel.stuff(raw)) == raw


def test_dynamixel_stream_framing_skips_garbage_and_damaged_packets():
    good = hex_bytes("FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0")
    damaged = good[:-1] + b"\x00"
    stream = bytearray(b"\xff\xff\x00" + damaged + good + good[:8])
    found = []
    while True:
        packet, drop = dynamixel.find_packet(stream)
        del stream[:drop]
        if packet is None:
            break
        found.append(packet)
    assert found == [good]
    assert bytes(stream) == good[:8]


def test_fast_sync_read_reply_splits_into_blocks():
    reg = XL.register("Present_Position")
    blocks = [(0, 1, dynamixel.encode(166, reg)), (0x80, 2, dynamixel.encode(-5, reg))]
    status = dynamixel.parse_status(dynamixel.fast_sync_reply(blocks))
    assert status.servo_id == dynamixel.BROADCAST
    split = dynamixel.fast_sync_blocks(status, reg.size)
    assert split == {1: (0, blocks[0][2]), 2: (0x80, blocks[1][2])}
    assert dynamixel.decode(split[2][1], reg) == -5
    with pytest.raises(PacketError, match="whole blocks"):
        dynamixel.fast_sync_blocks(status, reg.size + 1)
