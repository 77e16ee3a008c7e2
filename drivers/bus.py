"""MotorBus: servo transactions over a serial port (pyserial), with retries, timeouts and stats.

One class for both protocols; the protocol module (drivers/feetech.py or drivers/dynamixel.py)
builds and parses the bytes. Retries and timeouts are bus settings, set once. Every failure is
typed (BusTimeout, ChecksumError, PacketError, ServoError, PortGone) and names the servo and the
register; a port that disappears raises PortGone at the next transaction, never a hang.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import serial

from . import dynamixel, feetech
from .errors import BusError, BusTimeout, PacketError, PortGone, ServoError
from .tables import Register, ServoModel, model_by_number

PROTOCOLS = {"feetech": feetech, "dynamixel": dynamixel}


@dataclass(frozen=True)
class BusSettings:
    baudrate: int = 1_000_000
    timeout_s: float = 0.02  # for a whole reply (all servos of a sync read)
    retries: int = 2  # extra attempts after a timeout or a damaged reply (LeRobot's default)
    fast_sync_read: bool = True  # Dynamixel: one reply packet for all servos


@dataclass
class BusStats:
    cycles: int = 0  # transactions attempted
    retries: int = 0
    timeouts: int = 0
    corrupt: int = 0  # checksum or framing errors
    servo_errors: int = 0
    failures: int = 0  # transactions that failed after all retries
    latency_s: deque = field(default_factory=lambda: deque(maxlen=20000))

    def summary(self) -> dict:
        lat = np.asarray(self.latency_s) * 1e6 if self.latency_s else np.zeros(1)
        return {
            "cycles": self.cycles,
            "retries": self.retries,
            "timeouts": self.timeouts,
            "corrupt": self.corrupt,
            "servo_errors": self.servo_errors,
            "failures": self.failures,
            "latency_us_p50": float(np.percentile(lat, 50)),
            "latency_us_p99": float(np.percentile(lat, 99)),
        }


class MotorBus:
    """``with MotorBus("/dev/ttyACM0", "feetech") as bus: bus.sync_read(reg, [1, 2, 3])``.

    ``port`` may also be an already open serial-like object (tests, other transports).
    """

    def __init__(self, port, protocol: str, settings: BusSettings | None = None):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
        self.protocol, self.codec = protocol, PROTOCOLS[protocol]
        self.settings = settings or BusSettings()
        self.stats = BusStats()
        self._port_arg = port
        self.port_name = port if isinstance(port, str) else getattr(port, "port", repr(port))
        self.serial = None if isinstance(port, str) else port
        self._requests: dict[tuple, bytes] = {}

    # --- port -------------------------------------------------------------------------------
    def open(self) -> MotorBus:
        if self.serial is None:
            try:
                self.serial = serial.Serial(
                    self._port_arg,
                    self.settings.baudrate,
                    timeout=self.settings.timeout_s,
                    write_timeout=self.settings.timeout_s * 5,
                )
            except (serial.SerialException, OSError) as e:
                raise PortGone(
                    f"cannot open {self.port_name}: {e} (is the cable plugged in, is "
                    f"the path right, may you read it? see `kiwi scan --help`)"
                ) from e
        return self

    def close(self) -> None:
        if self.serial is not None:
            try:
                self.serial.close()
            except (serial.SerialException, OSError):
                pass
            self.serial = None

    def __enter__(self) -> MotorBus:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _io(self, request: bytes) -> None:
        try:
            self.serial.reset_input_buffer()  # a late reply from a failed attempt must not count
            self.serial.write(request)
        except (serial.SerialException, OSError) as e:
            raise PortGone(f"{self.port_name} failed while writing: {e}") from e

    def _read(self, n: int) -> bytes:
        try:
            return self.serial.read(n)
        except (serial.SerialException, OSError) as e:
            raise PortGone(f"{self.port_name} failed while reading (unplugged?): {e}") from e

    # --- transactions with retries ----------------------------------------------------------
    def _transact(self, request: bytes, receive, context: str):
        """Sends ``request`` and runs ``receive()`` until it succeeds or retries run out."""
        if self.serial is None:
            raise PortGone(f"bus on {self.port_name} is not open")
        s, stats = self.settings, self.stats
        last: BusError | None = None
        for attempt in range(s.retries + 1):
            stats.cycles += 1
            if attempt:
                stats.retries += 1
            t0 = time.perf_counter()
            self._io(request)
            if receive is None:
                stats.latency_s.append(time.perf_counter() - t0)
                return None
            try:
                result = receive()
            except BusTimeout as e:
                stats.timeouts += 1
                last = e
                continue
            except PacketError as e:
                stats.corrupt += 1
                last = e
                continue
            stats.latency_s.append(time.perf_counter() - t0)
            return result
        stats.failures += 1
        raise type(last)(f"{context}: {last} (after {s.retries + 1} attempts)") from last

    def _receive_packets(self, count: int, expected_len: int | None) -> list:
        """``count`` status packets. With a known length, one read; else framed as they come."""
        codec = self.codec
        if expected_len is not None:
            buf = self._read(expected_len * count)
            if len(buf) < expected_len * count:
                raise BusTimeout(f"got {len(buf)} of {expected_len * count} reply bytes")
            try:
                return [
                    codec.parse_status(buf[i * expected_len : (i + 1) * expected_len])
                    for i in range(count)
                ]
            except PacketError:
                if self.protocol == "feetech":
                    raise
                return self._frame(bytearray(buf), count)  # byte stuffing changed a length
        return self._frame(bytearray(), count)

    def _frame(self, buf: bytearray, count: int) -> list:
        out = []
        deadline = time.perf_counter() + self.settings.timeout_s
        while len(out) < count:
            pkt, drop = self.codec.find_packet(buf)
            del buf[:drop]
            if pkt is not None:
                out.append(self.codec.parse_status(pkt))
                continue
            if time.perf_counter() > deadline:
                raise BusTimeout(f"got {len(out)} of {count} replies")
            more = self._read(max(1, self.serial.in_waiting or 1))
            buf += more
        return out

    def _check(self, status, servo_id: int, context: str) -> None:
        if status.servo_id != servo_id:
            raise PacketError(f"reply from servo {status.servo_id}, expected {servo_id}")
        if status.error:
            names = self.codec.error_names(status.error)
            # Dynamixel's hardware-alert bit accompanies otherwise good replies; Feetech's flags
            # likewise report conditions (overload, overheat) while data still arrives.
            self.stats.servo_errors += 1
            if self.protocol == "dynamixel" and status.error & 0x7F:
                raise ServoError(servo_id, status.error, names, context)

    # --- the operations ---------------------------------------------------------------------
    def ping(self, servo_id: int) -> int:
        """The servo's model number (Feetech: PING, then a READ of address 3)."""
        codec = self.codec
        context = f"ping servo {servo_id}"
        if self.protocol == "dynamixel":
            status = self._transact(
                codec.ping(servo_id), lambda: self._receive_packets(1, 14)[0], context
            )
            self._check(status, servo_id, context)
            return int.from_bytes(status.params[:2], "little")
        status = self._transact(
            codec.ping(servo_id), lambda: self._receive_packets(1, 6)[0], context
        )
        self._check(status, servo_id, context)
        status = self._transact(
            codec.read(servo_id, 3, 2), lambda: self._receive_packets(1, 8)[0], context
        )
        return int.from_bytes(status.params, "little")

    def identify(self, servo_id: int) -> ServoModel | None:
        return model_by_number(self.protocol, self.ping(servo_id))

    def read(self, servo_id: int, reg: Register) -> int:
        context = f"read {reg.name} from servo {servo_id}"
        size = self.codec.MIN_STATUS + reg.size
        status = self._transact(
            self.codec.read(servo_id, reg.address, reg.size),
            lambda: self._receive_packets(1, size)[0],
            context,
        )
        self._check(status, servo_id, context)
        return self.codec.decode(status.params, reg)

    def write(self, servo_id: int, reg: Register, value: int) -> None:
        context = f"write {reg.name}={value} to servo {servo_id}"
        request = self.codec.write(servo_id, reg.address, self.codec.encode(value, reg))
        status = self._transact(
            request, lambda: self._receive_packets(1, self.codec.MIN_STATUS)[0], context
        )
        self._check(status, servo_id, context)

    def sync_read(self, reg: Register, ids: list[int]) -> dict[int, int]:
        context = f"sync read {reg.name} from servos {list(ids)}"
        fast = self.protocol == "dynamixel" and self.settings.fast_sync_read
        key = ("sync_read", reg.address, reg.size, tuple(ids), fast)
        request = self._requests.get(key)
        if request is None:
            request = (
                self.codec.sync_read(reg.address, reg.size, list(ids), fast=True)
                if fast
                else self.codec.sync_read(reg.address, reg.size, list(ids))
            )
            self._requests[key] = request
        if fast:
            status = self._transact(
                request,
                lambda: self._receive_packets(1, 7 + 1 + len(ids) * (reg.size + 4))[0],
                context,
            )
            blocks = dynamixel.fast_sync_blocks(status, reg.size)
            missing = [i for i in ids if i not in blocks]
            if missing:
                raise PacketError(f"{context}: no data from servos {missing}")
            out = {}
            for servo_id in ids:
                error, data = blocks[servo_id]
                if error & 0x7F:
                    raise ServoError(servo_id, error, dynamixel.error_names(error), context)
                out[servo_id] = dynamixel.decode(data, reg)
            return out
        statuses = self._transact(
            request,
            lambda: self._receive_packets(len(ids), self.codec.MIN_STATUS + reg.size),
            context,
        )
        out = {}
        for servo_id, status in zip(ids, statuses):
            self._check(status, servo_id, context)
            out[servo_id] = self.codec.decode(status.params, reg)
        return out

    def sync_write(self, reg: Register, values: dict[int, int]) -> None:
        """No reply exists to confirm a sync write; a failure shows in the next read."""
        data = {i: self.codec.encode(int(v), reg) for i, v in values.items()}
        self._transact(
            self.codec.sync_write(reg.address, reg.size, data), None, f"sync write {reg.name}"
        )

    def broadcast_ping(self, max_servos: int = 16) -> dict[int, int]:
        """{id: model number} of every servo that answers a broadcast PING (in id order)."""
        if self.serial is None:
            raise PortGone(f"bus on {self.port_name} is not open")
        self._io(self.codec.ping(self.codec.BROADCAST))
        found = {}
        buf = bytearray()
        deadline = time.perf_counter() + self.settings.timeout_s + 0.002 * max_servos
        while time.perf_counter() < deadline and len(found) < max_servos:
            buf += self._read(max(1, self.serial.in_waiting or 1))
            while True:
                pkt, drop = self.codec.find_packet(buf)
                del buf[:drop]
                if pkt is None:
                    break
                status = self.codec.parse_status(pkt)
                found[status.servo_id] = (
                    int.from_bytes(status.params[:2], "little")
                    if self.protocol == "dynamixel"
                    else -1
                )
        if self.protocol == "feetech":
            for servo_id in found:
                found[servo_id] = self.ping(servo_id)
        return dict(sorted(found.items()))


def servo_error_names(protocol: str, code: int) -> tuple[str, ...]:
    return PROTOCOLS[protocol].error_names(code)
