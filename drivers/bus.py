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

try:
    import termios
except ImportError:  # pragma: no cover - Windows
    termios = None

PROTOCOLS = {"feetech": feetech, "dynamixel": dynamixel}
# What a vanished port raises: pyserial wraps most OS errors, but reset_input_buffer (tcflush)
# raises termios.error, which is not an OSError.
PORT_ERRORS = (serial.SerialException, OSError) + ((termios.error,) if termios else ())


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
            except PORT_ERRORS as e:
                raise PortGone(
                    f"cannot open {self.port_name}: {e} (is the cable plugged in, is "
                    f"the path right, may you read it? see `kiwi scan --help`)"
                ) from e
        return self

    def close(self) -> None:
        if self.serial is not None:
            try:
                self.serial.close()
            except PORT_ERRORS:
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
        except PORT_ERRORS as e:
            raise PortGone(f"{self.port_name} failed while writing (unplugged?): {e}") from e

    def _read(self, n: int) -> bytes:
        try:
            return self.serial.read(n)
        except PORT_ERRORS as e:
            raise PortGone(f"{self.port_name} failed while reading (unplugged?): {e}") from e

    def _read_available(self) -> bytes:
        """What has arrived, or (waiting up to the port timeout) at least one byte."""
        try:
            waiting = self.serial.in_waiting
        except PORT_ERRORS as e:
            raise PortGone(f"{self.port_name} failed while reading (unplugged?): {e}") from e
        return self._read(max(1, waiting))

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

    def _receive_replies(self, ids: list[int], n_params: int) -> list:
        """One status packet from each of ``ids``, in order, each with ``n_params`` bytes.

        A reply that does not fit its request (a late answer to an earlier one) is a PacketError,
        so it is retried rather than taken for this request's answer."""
        codec, count = self.codec, len(ids)
        size = codec.MIN_STATUS + n_params
        buf = self._read(size * count)
        if len(buf) < size * count:
            raise BusTimeout(f"got {len(buf)} of {size * count} reply bytes")
        try:
            statuses = [codec.parse_status(buf[i * size : (i + 1) * size]) for i in range(count)]
        except PacketError:
            if not self._stuffed(buf, size):
                raise  # damaged: retry now rather than wait for bytes that will not come
            statuses = self._frame(bytearray(buf), count)  # byte stuffing made a reply longer
        for servo_id, status in zip(ids, statuses):
            if status.servo_id != servo_id or len(status.params) != n_params:
                raise PacketError(
                    f"reply from servo {status.servo_id} with {len(status.params)} data bytes, "
                    f"expected servo {servo_id} with {n_params} (a late reply?)"
                )
        return statuses

    def _stuffed(self, buf: bytes, expected_len: int) -> bool:
        """Whether a Dynamixel reply in ``buf`` says it is longer than expected (stuffing)."""
        if self.protocol != "dynamixel":
            return False
        start = 0
        while start + 7 <= len(buf) and buf[start : start + 4] == dynamixel.HEADER:
            total = dynamixel.packet_length(buf[start : start + 7])
            if total > expected_len:
                return True
            start += total
        return False

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
            buf += self._read_available()
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
                codec.ping(servo_id), lambda: self._receive_replies([servo_id], 3)[0], context
            )
            self._check(status, servo_id, context)
            return int.from_bytes(status.params[:2], "little")
        status = self._transact(
            codec.ping(servo_id), lambda: self._receive_replies([servo_id], 0)[0], context
        )
        self._check(status, servo_id, context)
        status = self._transact(
            codec.read(servo_id, 3, 2), lambda: self._receive_replies([servo_id], 2)[0], context
        )
        self._check(status, servo_id, context)
        return int.from_bytes(status.params, "little")

    def identify(self, servo_id: int) -> ServoModel | None:
        return model_by_number(self.protocol, self.ping(servo_id))

    def read(self, servo_id: int, reg: Register) -> int:
        context = f"read {reg.name} from servo {servo_id}"
        status = self._transact(
            self.codec.read(servo_id, reg.address, reg.size),
            lambda: self._receive_replies([servo_id], reg.size)[0],
            context,
        )
        self._check(status, servo_id, context)
        return self.codec.decode(status.params, reg)

    def write(self, servo_id: int, reg: Register, value: int) -> None:
        context = f"write {reg.name}={value} to servo {servo_id}"
        request = self.codec.write(servo_id, reg.address, self.codec.encode(value, reg))
        status = self._transact(request, lambda: self._receive_replies([servo_id], 0)[0], context)
        self._check(status, servo_id, context)

    def sync_read(self, reg: Register, ids: list[int]) -> dict[int, int]:
        """``{id: value}``; a timeout names the servos that do not answer a ping."""
        if not ids:
            return {}
        try:
            return self._sync_read(reg, ids)
        except BusTimeout as e:
            silent = self._silent(ids)
            if not silent:
                raise
            raise BusTimeout(
                f"{e}; no answer from servo(s) {silent} (absent, unpowered, wrong id or baud rate)"
            ) from e

    def _silent(self, ids: list[int]) -> list[int]:
        """Which of ``ids`` never answer a PING (with the bus's retries): to name them."""
        n_params = 3 if self.protocol == "dynamixel" else 0  # model number and firmware
        silent = []
        for servo_id in ids:
            for _ in range(self.settings.retries + 1):  # a lost reply is not a lost servo
                self._io(self.codec.ping(servo_id))
                try:
                    self._receive_replies([servo_id], n_params)
                except BusTimeout:
                    continue
                except PacketError:
                    pass  # it answered, if garbled
                break
            else:
                silent.append(servo_id)
        return silent

    def _sync_read(self, reg: Register, ids: list[int]) -> dict[int, int]:
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
            # ERR1 follows INST, then ID DATA CRC ERR ... ID DATA (the last CRC is the packet's)
            n_params = len(ids) * (reg.size + 4) - 3
            status = self._transact(
                request,
                lambda: self._receive_replies([dynamixel.BROADCAST], n_params)[0],
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
            lambda: self._receive_replies(list(ids), reg.size),
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
            buf += self._read_available()
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
