"""MotorBus: servo transactions over a serial port (pyserial), with retries, timeouts and stats.

One class for both protocols; the protocol module (drivers/feetech.py or drivers/dynamixel.py)
builds and parses the bytes. Retries and timeouts are bus settings, set once. Every failure is
typed (BusTimeout, ChecksumError, PacketError, ServoError, PortGone) and names the servo and the
register; a port that disappears raises PortGone at the next transaction, never a hang.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import serial

from . import dynamixel, feetech
from .bus_stats import BusStats
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
                    f"cannot open {self.port_name}: {port_problem(self.port_name, e)}"
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
    def _transact(self, request, receive, context: str):
        """Sends ``request`` (bytes, or a function giving each attempt's) and runs ``receive()``
        until it succeeds or retries run out.

        Timeouts and damaged replies are retried; a servo's own error report (ServoError) and a
        vanished port (PortGone) are not. Whatever ends it is a BusError naming ``context``."""
        if self.serial is None:
            raise PortGone(f"bus on {self.port_name} is not open")
        s, stats = self.settings, self.stats
        last: BusError | None = None
        for attempt in range(s.retries + 1):
            stats.cycles += 1
            if attempt:
                stats.retries += 1
            t0 = time.perf_counter()
            try:
                self._io(request() if callable(request) else request)
                if receive is None:
                    stats.succeeded(time.perf_counter() - t0)
                    return None
                result = receive()
            except BusTimeout as e:
                stats.count("timeouts", e.servo_id)
                last = e
                continue
            except PacketError as e:
                stats.count("corrupt", e.servo_id)
                last = e
                continue
            except (ServoError, PortGone) as e:
                stats.failed(e)
                raise
            stats.succeeded(time.perf_counter() - t0)
            return result
        error = type(last)(f"{context}: {last} (after {s.retries + 1} attempts)", last.servo_id)
        stats.failed(error)
        raise error from last

    def _receive_replies(
        self, ids: list[int], n_params: int, context: str = "", errors: bool = True
    ) -> list:
        """One status packet from each of ``ids``, in order, each with ``n_params`` bytes.

        A reply that does not fit its request (a late answer to an earlier one) is a PacketError,
        so it is retried rather than taken for this request's answer. With ``errors``, a status
        whose error says the instruction was not carried out raises ServoError (not retried)."""
        codec, count = self.codec, len(ids)
        size = codec.MIN_STATUS + n_params
        attributable = ids[0] != codec.BROADCAST
        buf = self._read(size * count)
        if len(buf) < size * count:
            answered = self._answered(buf)
            if errors:  # an error status carries no data, so it is shorter than expected
                for status in answered:
                    if status.servo_id in ids and status.error:
                        self._servo_error(status, context)
            heard = {status.servo_id for status in answered}
            silent = next((i for i in ids if i not in heard), None) if attributable else None
            raise BusTimeout(f"got {len(buf)} of {size * count} reply bytes", silent)
        statuses = []
        try:
            for i in range(count):
                try:
                    statuses.append(codec.parse_status(buf[i * size : (i + 1) * size]))
                except PacketError as e:
                    e.servo_id = ids[i] if attributable else None
                    raise
        except PacketError:
            if not self._stuffed(buf, size):
                raise  # damaged: retry now rather than wait for bytes that will not come
            statuses = self._frame(bytearray(buf), ids)  # byte stuffing made a reply longer
        flagged = 0
        for servo_id, status in zip(ids, statuses):
            if status.servo_id != servo_id:
                raise PacketError(
                    f"reply from servo {status.servo_id}, expected {servo_id} (a late reply?)",
                    servo_id if attributable else None,
                )
            if errors and status.error:
                self._servo_error(status, context)
                flagged += 1
            if len(status.params) != n_params:
                raise PacketError(
                    f"reply from servo {servo_id} with {len(status.params)} data bytes, "
                    f"expected {n_params} (a late reply?)",
                    servo_id if attributable else None,
                )
        self.stats.servo_errors += flagged
        return statuses

    def _answered(self, buf: bytes) -> list:
        """The complete, intact status packets in ``buf`` (a partial reply)."""
        rest, out = bytearray(buf), []
        while True:
            pkt, drop = self.codec.find_packet(rest)
            del rest[:drop]
            if pkt is None:
                return out
            try:
                out.append(self.codec.parse_status(pkt))
            except PacketError:
                continue

    def _servo_error(self, status, context: str) -> None:
        """Raises ServoError where the error byte says the instruction was not carried out.

        Dynamixel's hardware-alert bit accompanies otherwise good replies, and Feetech's flags
        (overload, overheat, voltage) report conditions while data still arrives: those pass."""
        code = status.error
        fatal = code & 0x7F if self.protocol == "dynamixel" else code & feetech.INSTRUCTION_ERROR
        if fatal:
            self.stats.servo_errors += 1
            raise ServoError(status.servo_id, code, self.codec.error_names(code), context)

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

    def _frame(self, buf: bytearray, ids: list[int]) -> list:
        out = []
        deadline = time.perf_counter() + self.settings.timeout_s
        while len(out) < len(ids):
            pkt, drop = self.codec.find_packet(buf)
            del buf[:drop]
            if pkt is not None:
                out.append(self.codec.parse_status(pkt))
                continue
            if time.perf_counter() > deadline:
                missing = ids[len(out)]
                raise BusTimeout(
                    f"got {len(out)} of {len(ids)} replies",
                    None if missing == self.codec.BROADCAST else missing,
                )
            buf += self._read_available()
        return out

    def _value(self, reg: Register, data: bytes, servo_id: int) -> int:
        """Decoded, and within the register's range: a value outside it came from damage."""
        value = self.codec.decode(data, reg)
        if not reg.allows(value):
            hint = (
                " or a servo in multi-turn mode (Phase bit 4 set)"
                if self.protocol == "feetech" and reg.name == "Present_Position"
                else ""
            )
            raise PacketError(
                f"servo {servo_id} sent {reg.name} = {value}, outside {reg.range_text} "
                f"(a damaged reply{hint})",
                servo_id,
            )
        return value

    def _encode(self, reg: Register, value: int, servo_id: int) -> bytes:
        if not reg.allows(value):
            raise ValueError(
                f"{reg.name} = {value} for servo {servo_id} is outside {reg.range_text}"
            )
        return self.codec.encode(value, reg)

    # --- the operations ---------------------------------------------------------------------
    def ping(self, servo_id: int) -> int:
        """The servo's model number (Feetech: PING, then a READ of address 3)."""
        codec = self.codec
        context = f"ping servo {servo_id}"
        self.stats.track((servo_id,))
        if self.protocol == "dynamixel":
            status = self._transact(
                codec.ping(servo_id),
                lambda: self._receive_replies([servo_id], 3, context)[0],
                context,
            )
            return int.from_bytes(status.params[:2], "little")
        self._transact(
            codec.ping(servo_id), lambda: self._receive_replies([servo_id], 0, context), context
        )
        status = self._transact(
            codec.read(servo_id, 3, 2),
            lambda: self._receive_replies([servo_id], 2, context)[0],
            context,
        )
        return int.from_bytes(status.params, "little")

    def identify(self, servo_id: int) -> ServoModel | None:
        return model_by_number(self.protocol, self.ping(servo_id))

    def read(self, servo_id: int, reg: Register) -> int:
        context = f"read {reg.name} from servo {servo_id}"
        self.stats.track((servo_id,))

        def receive() -> int:
            status = self._receive_replies([servo_id], reg.size, context)[0]
            return self._value(reg, status.params, servo_id)

        return self._transact(self.codec.read(servo_id, reg.address, reg.size), receive, context)

    def write(self, servo_id: int, reg: Register, value: int) -> None:
        context = f"write {reg.name}={value} to servo {servo_id}"
        request = self.codec.write(servo_id, reg.address, self._encode(reg, value, servo_id))
        self.stats.track((servo_id,))
        self._transact(request, lambda: self._receive_replies([servo_id], 0, context), context)

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
            for servo_id in silent:  # the failure is theirs (already counted in the totals)
                if servo_id != e.servo_id:
                    self.stats.per_servo[servo_id]["failures"] += 1
            raise BusTimeout(
                f"{e}; no answer from servo(s) {silent} (absent, unpowered, wrong id or baud rate)",
                silent[0],
            ) from e

    def _silent(self, ids: list[int]) -> list[int]:
        """Which of ``ids`` never answer a PING (with the bus's retries): to name them."""
        n_params = 3 if self.protocol == "dynamixel" else 0  # model number and firmware
        silent = []
        for servo_id in ids:
            for _ in range(self.settings.retries + 1):  # a lost reply is not a lost servo
                self._io(self.codec.ping(servo_id))
                try:
                    self._receive_replies([servo_id], n_params, errors=False)
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
            if len(set(ids)) != len(ids):
                raise ValueError(f"{context}: an id appears twice")
            request = (
                self.codec.sync_read(reg.address, reg.size, list(ids), fast=True)
                if fast
                else self.codec.sync_read(reg.address, reg.size, list(ids))
            )
            self._requests[key] = request
            self.stats.track(ids)
        if fast:
            return self._transact(request, lambda: self._fast_values(reg, ids, context), context)
        if self.protocol == "feetech":
            return self._sync_read_keeping(reg, list(ids), request, context)

        def receive() -> dict[int, int]:
            statuses = self._receive_replies(list(ids), reg.size, context)
            return {i: self._value(reg, st.params, i) for i, st in zip(ids, statuses)}

        return self._transact(request, receive, context)

    def _sync_read_keeping(
        self, reg: Register, ids: list[int], first_request: bytes, context: str
    ) -> dict[int, int]:
        """Feetech: one status per servo, all the same size, so whole replies sit at fixed
        offsets even when one is lost. Where replies were only lost or damaged, the intact ones
        (checksum, size, value in range) are kept and a retry asks only the servos still missing:
        with six replies a cycle, losing one no longer costs the other five. A reply that does not
        belong (a servo not asked, out of order, another size: a late answer to something else)
        discards the whole attempt, as the buffer holds someone else's replies."""
        got: dict[int, int] = {}
        size = feetech.MIN_STATUS + reg.size

        def request() -> bytes:
            if not got:
                return first_request
            return feetech.sync_read(reg.address, reg.size, [i for i in ids if i not in got])

        def receive() -> dict[int, int]:
            pending = [i for i in ids if i not in got]
            order = {servo_id: k for k, servo_id in enumerate(pending)}
            buf = self._read(size * len(pending))
            kept, last, damaged = {}, -1, None
            for k in range(len(buf) // size):
                try:
                    status = feetech.parse_status(buf[k * size : (k + 1) * size])
                except PacketError as e:
                    damaged = damaged or e
                    continue
                if order.get(status.servo_id, -1) <= last or len(status.params) != reg.size:
                    raise PacketError(
                        f"reply from servo {status.servo_id} with {len(status.params)} data "
                        f"bytes, expected servos {pending} in turn with {reg.size} (a late reply?)"
                    )
                last = order[status.servo_id]
                if status.error:
                    self._servo_error(status, context)  # raises if the read was refused
                    self.stats.servo_errors += 1  # flags that come with data (overload, ...)
                try:
                    kept[status.servo_id] = self._value(reg, status.params, status.servo_id)
                except PacketError as e:
                    damaged = damaged or e
            got.update(kept)
            missing = [i for i in pending if i not in got]
            if not missing:
                return {i: got[i] for i in ids}
            if damaged is None:
                raise BusTimeout(
                    f"got {len(buf)} of {size * len(pending)} reply bytes; no reply from "
                    f"servo(s) {missing}",
                    missing[0],
                )
            # a reply that fails its checksum names no servo: the first still missing stands in
            blame = missing[0] if damaged.servo_id is None else damaged.servo_id
            raise PacketError(f"{damaged}; servo(s) {missing} still to read", blame)

        return self._transact(request, receive, context)

    def _fast_values(self, reg: Register, ids: list[int], context: str) -> dict[int, int]:
        """A FAST_SYNC_READ reply: one packet, ``[ERR ID DATA CRC]`` per servo."""
        # ERR1 follows INST, then ID DATA CRC ERR ... ID DATA (the last CRC is the packet's)
        n_params = len(ids) * (reg.size + 4) - 3
        status = self._receive_replies([dynamixel.BROADCAST], n_params, errors=False)[0]
        blocks = dynamixel.fast_sync_blocks(status, reg.size)
        if set(blocks) != set(ids):
            raise PacketError(f"reply holds servos {sorted(blocks)}, expected {sorted(ids)}")
        out = {}
        for servo_id in ids:
            error, data = blocks[servo_id]
            if error & 0x7F:
                self.stats.servo_errors += 1
                raise ServoError(servo_id, error, dynamixel.error_names(error), context)
            out[servo_id] = self._value(reg, data, servo_id)
        return out

    def sync_write(self, reg: Register, values: dict[int, int]) -> None:
        """No reply exists to confirm a sync write; a failure shows in the next read."""
        data = {i: self._encode(reg, int(v), i) for i, v in values.items()}
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
                try:
                    status = self.codec.parse_status(pkt)
                except PacketError:
                    continue  # not a status packet (an echo, noise that framed): not a servo
                if self.protocol == "dynamixel":
                    if len(status.params) >= 2:
                        found[status.servo_id] = int.from_bytes(status.params[:2], "little")
                else:
                    found[status.servo_id] = -1
        if self.protocol == "feetech":
            for servo_id in found:
                found[servo_id] = self.ping(servo_id)
        return dict(sorted(found.items()))


def port_problem(port: str, error: Exception) -> str:
    """Why a port would not open, in words: missing, not a serial device, no permission."""
    path = Path(port)
    if not path.exists():
        what = "a dangling link" if path.is_symlink() else "no such device"
        return (
            f"{what} (is the cable plugged in and the path right? `ls /dev/ttyACM* /dev/ttyUSB*` "
            "lists serial ports)"
        )
    if not stat.S_ISCHR(path.stat().st_mode):
        kind = (
            "a directory"
            if path.is_dir()
            else "a regular file"
            if path.is_file()
            else "not a device"
        )
        return f"not a serial device ({kind})"
    if not os.access(path, os.R_OK | os.W_OK):
        return (
            "permission denied (add yourself to the port's group, e.g. `sudo usermod -aG dialout "
            "$USER`, then log in again)"
        )
    return f"{error} (is it the servo bus's adapter? is another program using it?)"


def servo_error_names(protocol: str, code: int) -> tuple[str, ...]:
    return PROTOCOLS[protocol].error_names(code)
