"""Feetech SCS/STS protocol (SO-100/SO-101's STS3215): bytes in, typed values out. Pure code.

Instruction packet: ``FF FF ID LEN INST P1..Pn CHK`` with LEN = n + 2 and
CHK = ~(ID + LEN + INST + sum(P)) & 0xFF. A status packet has ERR where INST was. SYNC_READ gets
one status packet per servo, in the order asked; SYNC_WRITE and broadcasts get none.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ChecksumError, PacketError
from .tables import Register

NAME = "feetech"
HEADER = b"\xff\xff"
BROADCAST = 0xFE
PING, READ, WRITE, REG_WRITE, ACTION, RESET = 0x01, 0x02, 0x03, 0x04, 0x05, 0x0A
SYNC_READ, SYNC_WRITE = 0x82, 0x83
ERROR_BITS = {
    0x01: "input voltage error",
    0x02: "angle sensor error",
    0x04: "overheat",
    0x08: "overcurrent",
    0x20: "overload",
    0x40: "instruction error",  # the SCS protocol's (Dynamixel 1.0's) bit; scservo_sdk has no name
}
INSTRUCTION_ERROR = 0x40
MIN_STATUS = 6  # FF FF ID LEN ERR CHK


@dataclass(frozen=True)
class Status:
    servo_id: int
    error: int
    params: bytes


def checksum(body: bytes) -> int:
    """Over ID .. last parameter."""
    return ~sum(body) & 0xFF


def packet(servo_id: int, inst: int, params: bytes = b"") -> bytes:
    """An instruction packet (or, with ``inst`` = error byte, a status packet)."""
    if not 0 <= servo_id <= 0xFE:
        raise ValueError(f"servo id {servo_id} outside 0..254")
    if len(params) > 250:
        raise ValueError(f"{len(params)} parameter bytes do not fit one packet")
    body = bytes((servo_id, len(params) + 2, inst)) + params
    return HEADER + body + bytes((checksum(body),))


def ping(servo_id: int) -> bytes:
    return packet(servo_id, PING)


def read(servo_id: int, address: int, size: int) -> bytes:
    return packet(servo_id, READ, bytes((address, size)))


def write(servo_id: int, address: int, data: bytes) -> bytes:
    return packet(servo_id, WRITE, bytes((address,)) + data)


def sync_read(address: int, size: int, ids: list[int]) -> bytes:
    return packet(BROADCAST, SYNC_READ, bytes((address, size, *ids)))


def sync_write(address: int, size: int, data: dict[int, bytes]) -> bytes:
    params = bytearray((address, size))
    for servo_id, value in data.items():
        if len(value) != size:
            raise ValueError(f"servo {servo_id}: {len(value)} bytes for a {size}-byte register")
        params.append(servo_id)
        params += value
    return packet(BROADCAST, SYNC_WRITE, bytes(params))


def status_length(n_params: int) -> int:
    return MIN_STATUS + n_params


def parse_status(buf: bytes) -> Status:
    """One complete status packet; raises PacketError or ChecksumError."""
    if len(buf) < MIN_STATUS or buf[:2] != HEADER:
        raise PacketError(f"not a status packet: {buf.hex(' ')}")
    length = buf[3]
    if length < 2 or len(buf) != length + 4:
        raise PacketError(f"status length field {length} does not match {len(buf)} bytes")
    if checksum(buf[2:-1]) != buf[-1]:
        raise ChecksumError(f"checksum mismatch in {buf.hex(' ')}")
    if buf[2] > 0xFD:
        raise PacketError(f"status from invalid id {buf[2]}")
    return Status(buf[2], buf[4], bytes(buf[5:-1]))


def split_statuses(buf: bytes, count: int, n_params: int) -> list[Status]:
    """``count`` back-to-back status packets of ``n_params`` parameter bytes each."""
    size = status_length(n_params)
    if len(buf) != count * size:
        raise PacketError(f"expected {count} replies of {size} bytes, got {len(buf)} bytes")
    return [parse_status(buf[i * size : (i + 1) * size]) for i in range(count)]


def find_packet(buf: bytes | bytearray) -> tuple[bytes | None, int]:
    """Stream framing for a receiver: (first complete packet or None, bytes to drop).

    Garbage before a header is dropped; a packet with a bad checksum is dropped whole and the
    search goes on, so None means no complete packet is in ``buf`` yet (wait for more bytes)."""
    offset = 0
    while True:
        start = buf.find(HEADER, offset)
        if start < 0:
            return None, max(offset, len(buf) - 1)  # a last FF may start a header
        while start + 2 < len(buf) and buf[start + 2] == 0xFF:  # FF FF FF ...: skip one
            start += 1
        if len(buf) < start + 4:
            return None, start
        if buf[start + 3] < 2:
            offset = start + 2
            continue
        end = start + buf[start + 3] + 4
        if len(buf) < end:
            return None, start
        candidate = bytes(buf[start:end])
        if checksum(candidate[2:-1]) != candidate[-1]:
            offset = end
            continue
        return candidate, end


def error_names(code: int) -> tuple[str, ...]:
    return tuple(name for bit, name in ERROR_BITS.items() if code & bit)


def encode(value: int, reg: Register) -> bytes:
    """Little-endian; sign-magnitude where the register has a sign bit."""
    if reg.sign_bit is not None:
        # a positive value reaching the sign bit would read back as a negative one
        magnitude = abs(value)
        if magnitude >= 1 << reg.sign_bit:
            raise ValueError(f"{reg.name}: magnitude {magnitude} exceeds {(1 << reg.sign_bit) - 1}")
        if value < 0:
            value = magnitude | (1 << reg.sign_bit)
    if not 0 <= value < 1 << (8 * reg.size):
        raise ValueError(f"{reg.name}: {value} does not fit {reg.size} byte(s)")
    return value.to_bytes(reg.size, "little")


def decode(data: bytes, reg: Register) -> int:
    value = int.from_bytes(data, "little")
    if reg.sign_bit is not None and value & (1 << reg.sign_bit):
        return -(value & ((1 << reg.sign_bit) - 1))
    return value
