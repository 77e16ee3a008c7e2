"""A servo emulator on a pseudo-terminal: N Feetech or Dynamixel servos behind one serial port.

Anything that opens ``VirtualBus.port`` with pyserial (our MotorBus, the vendors' SDKs, LeRobot)
talks the real protocol to it. Each servo has a register file laid out like its control table,
moves towards its goal at a realistic speed while torque is on, applies its homing offset the way
the real servo does (Feetech: present = actual - offset; Dynamixel: present = actual + offset) and
refuses EEPROM writes with torque on (Dynamixel access error). Options: wire time at the
configured baud (a pty has none of its own), and injected faults: dropped, corrupted and late
replies, and stalled requests. ``unplug()`` closes the port under the client's feet. A ``hand``
(drivers/virtual_hand.py) moves the servos whose torque is off, as a person would (calibration).

Servos of different models may share a bus (the Koch follower: XL430s and XL330s); an instruction
the emulator does not know is answered with the protocol's instruction error, as a servo would.
"""

from __future__ import annotations

import os
import select
import termios
import threading
import time
import tty
from dataclasses import dataclass, field

import numpy as np

from . import dynamixel, feetech
from .errors import PacketError
from .tables import MODELS, ServoModel
from .virtual_hand import HandSweep

SPEED_TICKS_PER_S = 3000.0  # ~46 rpm no-load (STS3215 figure; XL330s are similar)
FEETECH_TORQUE_ADDR, DXL_TORQUE_ADDR = 40, 64


@dataclass
class Faults:
    """Probabilities per reply, drawn from a seeded generator."""

    drop: float = 0.0  # no reply at all
    corrupt: float = 0.0  # one byte of the reply flipped
    late: float = 0.0  # this reply after late_s more (past a typical timeout)
    late_s: float = 0.05
    stall: float = 0.0  # per request: its replies only after stall_s (the servos are busy)
    stall_s: float = 0.05
    seed: int = 0


@dataclass
class VirtualServo:
    servo_id: int
    model: ServoModel
    regs: bytearray = field(default_factory=lambda: bytearray(256))
    actual: float = 2048.0  # ticks, in the motor's own frame (before the homing offset)
    goal: float = 2048.0
    updated: float = 0.0

    def __post_init__(self):
        m = self.model
        self.set("Model_Number", m.model_number)
        self.set("ID", self.servo_id)
        self.set("Max_Position_Limit", 4095)
        self.set("Min_Position_Limit", 0)
        if m.protocol == "feetech":
            self.set("Firmware_Major_Version", 3)
            self.set("Firmware_Minor_Version", 10)
            self.set("Return_Delay_Time", 0)
            self.set("Present_Voltage", 120)  # 0.1 V
            self.set("Max_Torque_Limit", 1000)
        else:
            self.set("Firmware_Version", 52)
            self.set("Baud_Rate", 3)
            self.set("Operating_Mode", 3)
            self.set("Present_Input_Voltage", 50)
            self.set("Position_P_Gain", 800)
        self.set("Present_Temperature", 30)
        self.goal = self.actual

    # register access by name (the table is the model's)
    def set(self, name: str, value: int) -> None:
        reg = self.model.register(name)
        codec = feetech if self.model.protocol == "feetech" else dynamixel
        self.regs[reg.address : reg.address + reg.size] = codec.encode(value, reg)

    def get(self, name: str) -> int:
        reg = self.model.register(name)
        codec = feetech if self.model.protocol == "feetech" else dynamixel
        return codec.decode(bytes(self.regs[reg.address : reg.address + reg.size]), reg)

    @property
    def torque(self) -> bool:
        return bool(self.get("Torque_Enable"))

    def _offset_sign(self) -> int:
        return -1 if self.model.protocol == "feetech" else 1  # present = actual -/+ offset

    def advance(self, now: float) -> None:
        """Moves towards the goal since the last update; refreshes the Present_* registers."""
        dt = max(0.0, now - self.updated) if self.updated else 0.0
        self.updated = now
        velocity = 0.0
        if self.torque and dt > 0:
            step = float(
                np.clip(self.goal - self.actual, -SPEED_TICKS_PER_S * dt, SPEED_TICKS_PER_S * dt)
            )
            self.actual += step
            velocity = step / dt
        present = int(round(self.actual)) + self._offset_sign() * self.get("Homing_Offset")
        if self.model.protocol == "feetech":
            present %= 4096  # single-turn feedback, as LeRobot configures STS3215s
        self.set("Present_Position", present)
        self.set("Present_Velocity", int(velocity))
        self.set("Moving", int(abs(self.goal - self.actual) > 1))

    def write(self, address: int, data: bytes) -> int:
        """Applies a write; returns a Dynamixel error number (0 if accepted)."""
        eeprom_end = 40 if self.model.protocol == "feetech" else 64
        if self.model.protocol == "dynamixel" and address < eeprom_end and self.torque:
            return 7  # access error: EEPROM is locked while torque is on
        self.regs[address : address + len(data)] = data
        goal_reg = self.model.register("Goal_Position")
        if address <= goal_reg.address < address + len(data):
            target = self.get("Goal_Position")
            low, high = self.get("Min_Position_Limit"), self.get("Max_Position_Limit")
            extended = self.model.protocol == "dynamixel" and self.get("Operating_Mode") == 4
            if high > low and not extended:
                target = min(max(target, low), high)
            self.goal = float(target - self._offset_sign() * self.get("Homing_Offset"))
        torque_addr = FEETECH_TORQUE_ADDR if self.model.protocol == "feetech" else DXL_TORQUE_ADDR
        if address <= torque_addr < address + len(data) and not self.torque:
            self.goal = self.actual
        self.servo_id = self.get("ID")
        return 0


class VirtualBus:
    """``VirtualBus("feetech", {1: "sts3215", ...})``; ``start()`` serves in a thread,
    ``serve_forever()`` in the caller's; ``port`` is the device path to open."""

    def __init__(
        self,
        protocol: str,
        servos: dict[int, str],
        baudrate: int = 1_000_000,
        wire_time: bool = False,
        return_delay_us: float = 0.0,
        faults: Faults | None = None,
        clock=time.monotonic,
        check_baud: bool = True,
        hand: HandSweep | None = None,
    ):
        """``wire_time``: requests and replies take their bytes' time on a wire at ``baudrate``
        (10 bits a byte), one after another, as on a half-duplex bus. ``check_baud``: a client
        whose port is set to another baud rate gets no answer, as from real servos (clients that
        set a non-standard rate the pty cannot report are served). ``hand``: moves the servos
        whose torque is off (their position, as a hand would), its time starting at the first
        request."""
        if protocol not in ("feetech", "dynamixel"):
            raise ValueError(f"protocol must be feetech or dynamixel, got {protocol!r}")
        self.protocol = protocol
        self.codec = feetech if protocol == "feetech" else dynamixel
        self.servos = {}
        for servo_id, name in servos.items():
            model = MODELS[name]
            if model.protocol != protocol:
                raise ValueError(f"{name} speaks {model.protocol}, not {protocol}")
            self.servos[servo_id] = VirtualServo(servo_id, model)
        self.baudrate, self.wire_time, self.return_delay_s = (
            baudrate,
            wire_time,
            return_delay_us / 1e6,
        )
        self.faults = faults or Faults()
        self.rng = np.random.default_rng(self.faults.seed)
        self.clock = clock
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.requests = 0
        self.check_baud = check_baud
        self.hand, self._hand_t0 = hand, None
        self._wire_free = 0.0  # when the simulated wire is next idle (clock time)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()  # wakes the server out of select() to stop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_arm(cls, config, **kwargs) -> VirtualBus:
        """The servos of an arm config (drivers.arm: SO100, KOCH): its protocol, ids and models."""
        return cls(config.protocol, {m.id: m.model for m in config.motors}, **kwargs)

    # --- serving ----------------------------------------------------------------------------
    def start(self) -> VirtualBus:
        self._thread = threading.Thread(target=self.serve_forever, name="virtual-bus", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            fd = self.master
            try:
                ready, _, _ = select.select([fd, self._wake_r], [], [], 0.5)
                if fd not in ready:
                    continue
                chunk = os.read(fd, 4096)
            except (OSError, ValueError):
                return  # unplugged (a closed descriptor is -1: ValueError)
            buf += chunk
            while True:
                pkt, drop = self.codec.find_packet(buf)
                del buf[:drop]
                if pkt is None:
                    break
                try:
                    self._serve(pkt)
                except (PacketError, IndexError, ValueError):
                    pass  # a malformed instruction: a real servo ignores it, and so do we

    def request_stop(self) -> None:
        """Asks ``serve_forever`` to return soon; safe from a signal handler (no locks, no join)."""
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def stop(self) -> None:
        self._halt()
        for which in ("master", "slave", "_wake_r", "_wake_w"):
            self._close(which)

    def unplug(self) -> None:
        """The cable is pulled: the port's other end closes; the client's next I/O fails.

        Synchronous: the server leaves select() first, as a descriptor being waited on stays
        open (and the pty not hung up) until the wait ends."""
        self._halt()
        self._close("master")

    def _halt(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def _close(self, which: str) -> None:
        """Closes our end once: a second close could hit a descriptor reused by someone else."""
        fd = getattr(self, which)
        if fd < 0:
            return
        setattr(self, which, -1)
        try:
            os.close(fd)
        except OSError:
            pass

    def __enter__(self) -> VirtualBus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- one request ------------------------------------------------------------------------
    def _serve(self, pkt: bytes) -> None:
        self.requests += 1
        if self.check_baud and not self._baud_matches():
            return  # at the wrong baud rate a servo hears noise, and says nothing
        now = self.clock()
        with self._lock:
            self._move_by_hand(now)
            for servo in self.servos.values():
                servo.advance(now)
            replies = self.handle(pkt)
        self._send(replies, len(pkt), now)

    def _move_by_hand(self, now: float) -> None:
        if self.hand is None:
            return
        if self._hand_t0 is None:
            self._hand_t0 = now
        for servo_id, ticks in self.hand.positions(now - self._hand_t0).items():
            servo = self.servos.get(servo_id)
            if servo is not None and not servo.torque:  # a limp servo goes where it is pushed
                servo.actual = servo.goal = ticks

    def _baud_matches(self) -> bool:
        try:
            speed = termios.tcgetattr(self.slave)[4]
        except (termios.error, OSError):
            return True
        expected = getattr(termios, f"B{self.baudrate}", None)
        return expected is None or speed in (expected, getattr(termios, "BOTHER", -1))

    def _send(self, replies: list[bytes], request_len: int, now: float) -> None:
        """Faults applied per reply; with wire time, the request and then each reply occupy the
        wire in turn and the replies are written when the last one would have arrived."""
        f, out = self.faults, []
        byte_s = 10.0 / self.baudrate
        t = max(now, self._wire_free) + (request_len * byte_s if self.wire_time else 0.0)
        if replies and f.stall and self.rng.random() < f.stall:
            t += f.stall_s
        for reply in replies:
            if f.drop and self.rng.random() < f.drop:
                continue
            if f.corrupt and self.rng.random() < f.corrupt:
                b = bytearray(reply)
                i = int(self.rng.integers(2, len(b)))  # keep the header: a damaged packet
                b[i] ^= int(self.rng.integers(1, 256))
                reply = bytes(b)
            t += self.return_delay_s + (len(reply) * byte_s if self.wire_time else 0.0)
            if f.late and self.rng.random() < f.late:
                t += f.late_s
            out.append(reply)
        self._wire_free = t
        delay = t - self.clock()
        if delay > 0 and (self.wire_time or self.return_delay_s or f.late or f.stall):
            time.sleep(delay)
        if out:
            try:
                os.write(self.master, b"".join(out))
            except OSError:
                pass  # unplugged (the master is then -1)

    def handle(self, pkt: bytes) -> list[bytes]:
        """Replies (possibly none) to one instruction packet."""
        if self.protocol == "feetech":
            servo_id, inst, params = pkt[2], pkt[4], pkt[5:-1]
        else:
            servo_id, inst, params = dynamixel.parse(pkt)
        targets = (
            sorted(self.servos)
            if servo_id == 0xFE
            else [servo_id]
            if servo_id in self.servos
            else []
        )
        codec = self.codec
        if inst == codec.PING:
            return [self._status(i, self._ping_params(self.servos[i])) for i in targets]
        if inst == codec.READ:
            address, size = self._addr_size(params)
            return [
                self._status(i, bytes(self.servos[i].regs[address : address + size]))
                for i in targets
                if servo_id != 0xFE
            ]
        if inst in (codec.WRITE, codec.REG_WRITE):
            address, data = self._addr_data(params)
            out = []
            for i in targets:
                err = self.servos[i].write(address, data)
                if servo_id != 0xFE:
                    out.append(self._status(i, b"", err))  # addressed id, even after an ID write
            self._rekey()
            return out
        if inst in (codec.SYNC_READ, getattr(codec, "FAST_SYNC_READ", -1)):
            address, size = self._addr_size(params)
            ids = params[2:] if self.protocol == "feetech" else params[4:]
            present = [self.servos[i] for i in ids if i in self.servos]
            if inst == codec.SYNC_READ:
                return [
                    self._status(s.servo_id, bytes(s.regs[address : address + size]))
                    for s in present
                ]
            blocks = [(0, s.servo_id, bytes(s.regs[address : address + size])) for s in present]
            return [dynamixel.fast_sync_reply(blocks)] if blocks else []
        if inst == codec.SYNC_WRITE:
            address, size = self._addr_size(params)
            body = params[2:] if self.protocol == "feetech" else params[4:]
            for k in range(0, len(body) - size, size + 1):
                if body[k] in self.servos:
                    self.servos[body[k]].write(address, bytes(body[k + 1 : k + 1 + size]))
            self._rekey()
            return []
        if inst == codec.ACTION:  # REG_WRITEs are applied at once, so there is nothing to do
            return [self._status(i, b"") for i in targets if servo_id != 0xFE]
        if self.protocol == "dynamixel" and servo_id == 0xFE:
            if inst in (dynamixel.BULK_READ, dynamixel.FAST_BULK_READ):
                return self._bulk_read(inst, dynamixel.bulk_read_entries(params))
            if inst == dynamixel.BULK_WRITE:
                for i, address, data in dynamixel.bulk_write_entries(params):
                    if i in self.servos:
                        self.servos[i].write(address, data)
                self._rekey()
                return []
        if targets and servo_id != 0xFE:  # unknown here: the protocol's instruction error
            error = feetech.INSTRUCTION_ERROR if self.protocol == "feetech" else 2
            return [self._status(targets[0], b"", error)]
        return []

    def _bulk_read(self, inst: int, entries: list[tuple[int, int, int]]) -> list[bytes]:
        """One status per servo present, in the order asked (FAST_BULK_READ: one packet)."""
        present = [(i, a, n) for i, a, n in entries if i in self.servos]
        data = [(i, bytes(self.servos[i].regs[a : a + n])) for i, a, n in present]
        if inst == dynamixel.BULK_READ:
            return [self._status(i, d) for i, d in data]
        return [dynamixel.fast_sync_reply([(0, i, d) for i, d in data])] if data else []

    def _rekey(self) -> None:
        """A servo whose ID register was written answers to its new id from now on."""
        if any(i != s.servo_id for i, s in self.servos.items()):
            self.servos = {s.servo_id: s for s in self.servos.values()}

    def _ping_params(self, servo: VirtualServo) -> bytes:
        if self.protocol == "feetech":
            return b""  # a Feetech status carries no model number
        return servo.get("Model_Number").to_bytes(2, "little") + bytes(
            (servo.get("Firmware_Version"),)
        )

    def _status(self, servo_id: int, params: bytes, error: int = 0) -> bytes:
        if self.protocol == "feetech":
            return feetech.packet(servo_id, error, params)
        return dynamixel.status_packet(servo_id, error, params)

    def _addr_size(self, params: bytes) -> tuple[int, int]:
        if self.protocol == "feetech":
            return params[0], params[1]
        return int.from_bytes(params[0:2], "little"), int.from_bytes(params[2:4], "little")

    def _addr_data(self, params: bytes) -> tuple[int, bytes]:
        if self.protocol == "feetech":
            return params[0], bytes(params[1:])
        return int.from_bytes(params[0:2], "little"), bytes(params[2:])

    # --- for tests and tools ----------------------------------------------------------------
    def servo(self, servo_id: int) -> VirtualServo:
        return self.servos[servo_id]
