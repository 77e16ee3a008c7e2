"""Dynamixel Protocol 2.0 (Koch's XL330/XL430): bytes in, typed values out. Pure code.

Packet: ``FF FF FD 00 ID LEN_L LEN_H INST P.. CRC_L CRC_H``; LEN counts INST, the parameters
and the CRC after byte stuffing (every ``FF FF FD`` inside INST..params gets an extra ``FD``);
the CRC is CRC-16 (polynomial 0x8005, initial 0, MSB first) over everything before it. A status
packet has INST 0x55 followed by ERR. FAST_SYNC_READ answers with one packet (id 0xFE) holding
``[ERR ID DATA CRC]`` per servo, the last block's CRC being the packet's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ChecksumError, PacketError
from .tables import Register

NAME = "dynamixel"
HEADER = b"\xff\xff\xfd\x00"
BROADCAST = 0xFE
PING, READ, WRITE, REG_WRITE, ACTION, FACTORY_RESET, REBOOT = (
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
    0x08,
)
STATUS = 0x55
SYNC_READ, SYNC_WRITE, FAST_SYNC_READ = 0x82, 0x83, 0x8A
BULK_READ, BULK_WRITE, FAST_BULK_READ = 0x92, 0x93, 0x9A
INSTRUCTION_ERROR = 2  # the error number a servo answers an instruction it does not know with
ERROR_NUMBERS = {
    1: "result fail",
    2: "instruction error",
    3: "CRC error",
    4: "data range error",
    5: "data length error",
    6: "data limit error",
    7: "access error",
}
ALERT = 0x80  # hardware error: read Hardware_Error_Status (register 70)
MIN_STATUS = 11  # header(4) ID LEN(2) INST ERR CRC(2)


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc_table()


@dataclass(frozen=True)
class Status:
    servo_id: int
    error: int
    params: bytes


def crc16(data: bytes, crc: int = 0) -> int:
    for byte in data:
        crc = ((crc << 8) ^ _TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(payload: bytes) -> bytes:
    """Adds an FD after every FF FF FD."""
    if b"\xff\xff\xfd" not in payload:
        return bytes(payload)
    out = bytearray()
    for i, b in enumerate(payload):
        out.append(b)
        if b == 0xFD and i >= 2 and payload[i - 2] == 0xFF and payload[i - 1] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(payload: bytes) -> bytes:
    """Drops the FD after every FF FF FD."""
    if b"\xff\xff\xfd\xfd" not in payload:
        return bytes(payload)
    out = bytearray()
    i = 0
    while i < len(payload):
        out.append(payload[i])
        if payload[i : i + 4] == b"\xff\xff\xfd\xfd":
            out += b"\xff\xfd"
            i += 4
            continue
        i += 1
    return bytes(out)


def packet(servo_id: int, inst: int, params: bytes = b"") -> bytes:
    if not 0 <= servo_id <= 0xFE:
        raise ValueError(f"servo id {servo_id} outside 0..254")
    payload = stuff(bytes((inst,)) + params)
    length = len(payload) + 2
    head = HEADER + bytes((servo_id, length & 0xFF, length >> 8)) + payload
    return head + crc16(head).to_bytes(2, "little")


def status_packet(servo_id: int, error: int, params: bytes = b"") -> bytes:
    return packet(servo_id, STATUS, bytes((error,)) + params)


def ping(servo_id: int) -> bytes:
    return packet(servo_id, PING)


def read(servo_id: int, address: int, size: int) -> bytes:
    return packet(servo_id, READ, address.to_bytes(2, "little") + size.to_bytes(2, "little"))


def write(servo_id: int, address: int, data: bytes) -> bytes:
    return packet(servo_id, WRITE, address.to_bytes(2, "little") + data)


def sync_read(address: int, size: int, ids: list[int], fast: bool = False) -> bytes:
    params = address.to_bytes(2, "little") + size.to_bytes(2, "little") + bytes(ids)
    return packet(BROADCAST, FAST_SYNC_READ if fast else SYNC_READ, params)


def sync_write(address: int, size: int, data: dict[int, bytes]) -> bytes:
    params = bytearray(address.to_bytes(2, "little") + size.to_bytes(2, "little"))
    for servo_id, value in data.items():
        if len(value) != size:
            raise ValueError(f"servo {servo_id}: {len(value)} bytes for a {size}-byte register")
        params.append(servo_id)
        params += value
    return packet(BROADCAST, SYNC_WRITE, bytes(params))


def bulk_read(entries: list[tuple[int, int, int]], fast: bool = False) -> bytes:
    """BULK_READ of ``(id, address, size)`` per servo: each answers with its own status packet,
    in the order asked (FAST_BULK_READ: one packet of blocks, as FAST_SYNC_READ)."""
    params = bytearray()
    for servo_id, address, size in entries:
        params.append(servo_id)
        params += address.to_bytes(2, "little") + size.to_bytes(2, "little")
    return packet(BROADCAST, FAST_BULK_READ if fast else BULK_READ, bytes(params))


def bulk_write(entries: list[tuple[int, int, bytes]]) -> bytes:
    """BULK_WRITE of ``(id, address, data)`` per servo (registers may differ); no reply."""
    params = bytearray()
    for servo_id, address, data in entries:
        params.append(servo_id)
        params += address.to_bytes(2, "little") + len(data).to_bytes(2, "little") + data
    return packet(BROADCAST, BULK_WRITE, bytes(params))


def bulk_read_entries(params: bytes) -> list[tuple[int, int, int]]:
    """A BULK_READ's parameters -> ``[(id, address, size)]``."""
    if not params or len(params) % 5:
        raise PacketError(f"bulk read parameters of {len(params)} bytes are not 5-byte entries")
    return [
        (
            params[k],
            int.from_bytes(params[k + 1 : k + 3], "little"),
            int.from_bytes(params[k + 3 : k + 5], "little"),
        )
        for k in range(0, len(params), 5)
    ]


def bulk_write_entries(params: bytes) -> list[tuple[int, int, bytes]]:
    """A BULK_WRITE's parameters -> ``[(id, address, data)]``."""
    out, k = [], 0
    while k < len(params):
        if k + 5 > len(params):
            raise PacketError(f"bulk write entry cut short at byte {k} of {len(params)}")
        size = int.from_bytes(params[k + 3 : k + 5], "little")
        if k + 5 + size > len(params):
            raise PacketError(f"bulk write entry for servo {params[k]} wants {size} data bytes")
        out.append(
            (
                params[k],
                int.from_bytes(params[k + 1 : k + 3], "little"),
                bytes(params[k + 5 : k + 5 + size]),
            )
        )
        k += 5 + size
    return out


def packet_length(header: bytes) -> int:
    """Total length of a packet from its first 7 bytes (header, id, length)."""
    if len(header) < 7 or header[:4] != HEADER:
        raise PacketError(f"not a Protocol 2.0 header: {bytes(header[:7]).hex(' ')}")
    return 7 + int.from_bytes(header[5:7], "little")


def parse(buf: bytes) -> tuple[int, int, bytes]:
    """One complete packet -> (id, instruction, unstuffed parameters). Raises on damage."""
    total = packet_length(buf)
    if len(buf) != total or total < 10:
        raise PacketError(f"length field says {total} bytes, got {len(buf)}")
    if crc16(buf[:-2]) != int.from_bytes(buf[-2:], "little"):
        raise ChecksumError(f"CRC mismatch in {bytes(buf).hex(' ')}")
    payload = unstuff(buf[7:-2])
    return buf[4], payload[0], payload[1:]


def parse_status(buf: bytes) -> Status:
    servo_id, inst, params = parse(buf)
    if inst != STATUS or not params:
        raise PacketError(f"not a status packet (instruction 0x{inst:02x})")
    if servo_id > 0xFE:
        raise PacketError(f"status from invalid id {servo_id}")
    return Status(servo_id, params[0], params[1:])


def fast_sync_blocks(status: Status, size: int) -> dict[int, tuple[int, bytes]]:
    """Splits a FAST_SYNC_READ reply into ``{id: (error, data)}``."""
    # params after the first ERR: ID DATA CRC ERR ID DATA CRC ... ID DATA (last CRC = packet's)
    blob = bytes((status.error,)) + status.params
    block = size + 4
    if (len(blob) + 2) % block:
        raise PacketError(
            f"fast sync read reply of {len(blob)} bytes is not whole blocks of {size}"
        )
    out = {}
    for i in range((len(blob) + 2) // block):
        part = blob[i * block : i * block + size + 2]
        out[part[1]] = (part[0], part[2 : 2 + size])
    return out


def fast_sync_reply(blocks: list[tuple[int, int, bytes]]) -> bytes:
    """The packet a FAST_SYNC_READ (or FAST_BULK_READ: data sizes may differ) is answered with,
    for the emulator: blocks of (error, id, data); each inner CRC covers the packet up to the end
    of its block."""
    body = bytearray()
    for k, (error, servo_id, data) in enumerate(blocks):
        body += bytes((error, servo_id)) + data
        if k < len(blocks) - 1:
            # Inner CRCs are not checked by receivers we know of; this one is over what precedes.
            body += crc16(HEADER + bytes((BROADCAST,)) + bytes(body)).to_bytes(2, "little")
    return packet(BROADCAST, STATUS, bytes(body))


def find_packet(buf: bytes | bytearray) -> tuple[bytes | None, int]:
    """Stream framing for a receiver: (first complete packet or None, bytes to drop).

    A packet with a bad CRC is dropped whole and the search goes on, so None means no complete
    packet is in ``buf`` yet (wait for more bytes)."""
    offset = 0
    while True:
        start = buf.find(HEADER[:3], offset)
        if start < 0:
            return None, max(offset, len(buf) - 2)  # a last FF FF may start a header
        if len(buf) < start + 7:
            return None, start
        if buf[start + 3] != 0x00:
            offset = start + 1
            continue
        total = 7 + int.from_bytes(buf[start + 5 : start + 7], "little")
        if total < 10 or total > 1024:
            offset = start + 3
            continue
        if len(buf) < start + total:
            return None, start
        candidate = bytes(buf[start : start + total])
        if crc16(candidate[:-2]) != int.from_bytes(candidate[-2:], "little"):
            offset = start + total
            continue
        return candidate, start + total


def error_names(code: int) -> tuple[str, ...]:
    names = []
    if code & ALERT:
        names.append("hardware alert")
    number = code & 0x7F
    if number:
        names.append(ERROR_NUMBERS.get(number, f"error {number}"))
    return tuple(names)


def encode(value: int, reg: Register) -> bytes:
    """Little-endian, two's complement for signed registers."""
    bits = 8 * reg.size
    if reg.signed:
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise ValueError(f"{reg.name}: {value} does not fit a signed {reg.size}-byte field")
        value &= (1 << bits) - 1
    elif not 0 <= value < 1 << bits:
        raise ValueError(f"{reg.name}: {value} does not fit {reg.size} byte(s)")
    return value.to_bytes(reg.size, "little")


def decode(data: bytes, reg: Register) -> int:
    return int.from_bytes(data, "little", signed=reg.signed)
