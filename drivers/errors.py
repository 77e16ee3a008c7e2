"""Typed bus errors: each names the servo, the register and what went wrong."""

from __future__ import annotations


class BusError(RuntimeError):
    """Base of everything a servo bus can report. ``servo_id`` names the servo the failure is
    attributable to, where one is (None for a whole-bus failure or an unattributable reply)."""

    def __init__(self, message: str = "", servo_id: int | None = None):
        super().__init__(message)
        self.servo_id = servo_id


class PacketError(BusError):
    """Bytes that are not a valid packet (bad header, length or id)."""


class ChecksumError(PacketError):
    """A packet whose checksum/CRC does not match its contents (corrupted on the wire)."""


class BusTimeout(BusError):
    """No (complete) reply within the bus timeout: servo absent, unpowered or wrong baud rate."""


class PortGone(BusError):
    """The serial port vanished or failed (unplugged cable, device reset, permission lost)."""


class ServoError(BusError):
    """A servo answered with its error flags set (overload, overheat, voltage, ...)."""

    def __init__(self, servo_id: int, code: int, names: tuple[str, ...], context: str = ""):
        where = f" ({context})" if context else ""
        super().__init__(
            f"servo {servo_id} reports {', '.join(names) or f'error 0x{code:02x}'}{where}",
            servo_id,
        )
        self.code, self.names, self.context = code, names, context


class UnknownRegister(KeyError, ValueError):
    """A register or model name that is not in the table: a KeyError for lookups, and a
    ValueError so the CLI reports it as the user's error in one line."""

    def __str__(self) -> str:
        return str(self.args[0])
