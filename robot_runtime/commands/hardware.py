"""Bench tools for the servo bus: emulate-bus, scan, read (calibrate: calibrate.py). Prompts live
here, never in the driver classes; none of these import torch. A user's mistake (a bad flag, a
port that is not there, a servo that does not answer) is one line and exit 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from ..textui import format_table
from . import command
from .calibrate import register as register_calibrate

FEETECH_BAUDS = (1_000_000, 500_000, 250_000, 115_200, 57_600)
DYNAMIXEL_BAUDS = (57_600, 1_000_000, 115_200, 2_000_000, 3_000_000, 4_000_000)
DEFAULT_MODEL = {"feetech": "sts3215", "dynamixel": "xl330-m288"}


def _ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--ids expects numbers separated by commas, got {text!r}") from None
    if not ids or any(not 0 <= i <= 252 for i in ids):
        raise ValueError(f"--ids must name servos 0..252, got {text!r}")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"--ids names servo(s) {twice} more than once: {text!r}")
    return ids


def _check_baud(protocol: str, baud: int | None) -> None:
    from drivers.tables import baud_problem

    problem = baud_problem(protocol, baud) if baud is not None else None
    if problem:
        raise ValueError(f"--baud: {problem}")


def _warn_latency(port: str) -> None:
    from drivers.ports import latency_warning

    warning = latency_warning(port)
    if warning:
        print(warning, file=sys.stderr)


def _probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--{name} is a probability (0..1), got {value}")
    return value


def _emulated_servos(args) -> tuple[str, dict[int, str]]:
    """(protocol, {id: model}) from --robot, --models or --ids/--model."""
    from drivers.arm import ARMS
    from drivers.tables import MODELS

    if sum(bool(x) for x in (args.robot, args.models, args.model)) > 1:
        raise ValueError("give one of --robot, --models and --model")
    if args.robot:
        config = ARMS[args.robot]
        servos = {m.id: m.model for m in config.motors}
    elif args.models:
        servos = {}
        for item in args.models.split(","):
            servo_id, _, name = item.strip().partition(":")
            if not servo_id.strip().isdigit() or not 0 <= int(servo_id) <= 252 or not name:
                raise ValueError(f"--models expects ID:MODEL items (1:xl430-w250), got {item!r}")
            if name not in MODELS:
                raise ValueError(
                    f"--models: unknown servo model {name!r}; known: {', '.join(MODELS)}"
                )
            servos[int(servo_id)] = name
    else:
        if not args.protocol:
            raise ValueError("emulate-bus needs --protocol (or --robot, or --models)")
        model = args.model or DEFAULT_MODEL[args.protocol]
        if model not in MODELS:
            raise ValueError(f"--model: unknown servo model {model!r}; known: {', '.join(MODELS)}")
        return args.protocol, dict.fromkeys(_ids(args.ids), model)
    protocols = {MODELS[name].protocol for name in servos.values()}
    if len(protocols) > 1:
        raise ValueError(f"one bus speaks one protocol; these models speak {sorted(protocols)}")
    (protocol,) = protocols
    if args.protocol and args.protocol != protocol:
        raise ValueError(f"--protocol {args.protocol}, but those servos speak {protocol}")
    return protocol, servos


def _make_link(link: Path, target: str) -> None:
    """A symlink at ``link`` to ``target``. A link already there is replaced (a stale one, left by
    an emulator that was killed, may point at a pty now someone else's); anything else is not."""
    _refuse_non_link(link)
    if link.is_symlink():
        old = os.readlink(link)
        state = "live" if os.path.exists(link) else "dangling"
        print(f"replacing the {state} link {link} -> {old}", file=sys.stderr)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)  # atomic: no moment without a link, nothing clobbered half-way


def _refuse_non_link(link: Path) -> None:
    if link.exists() and not link.is_symlink():
        raise ValueError(
            f"--link {link}: exists and is not a symlink; not replacing it "
            "(remove it or choose another path)"
        )
    if not link.parent.is_dir() or not os.access(link.parent, os.W_OK | os.X_OK):
        raise ValueError(f"--link {link}: {link.parent} is not a writable directory")


def _remove_link(link: Path, target: str) -> None:
    """Only our own link: another emulator may have taken the path over since."""
    try:
        if link.is_symlink() and os.readlink(link) == target:
            link.unlink()
    except OSError:
        pass


def _stop_on_signals(bus) -> dict:
    """SIGTERM, SIGINT and SIGHUP stop the server cleanly (so the link is removed)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, lambda *_: bus.request_stop())
    return previous


def cmd_emulate_bus(args) -> int:
    from drivers.virtual_bus import Faults, VirtualBus
    from drivers.virtual_hand import HandSweep

    protocol, servos = _emulated_servos(args)
    faults = Faults(
        drop=_probability("drop", args.drop),
        corrupt=_probability("corrupt", args.corrupt),
        late=_probability("late", args.late),
        late_s=args.late_ms / 1000,
        stall=_probability("stall", args.stall),
        stall_s=args.stall_ms / 1000,
        seed=args.seed,
    )
    _check_baud(protocol, args.baud)
    if args.sweep_s <= 0:
        raise ValueError(f"--sweep-s must be > 0, got {args.sweep_s}")
    hand = HandSweep(tuple(sorted(servos)), sweep_s=args.sweep_s) if args.sweep else None
    link = Path(args.link) if args.link else None
    if link is not None:
        _refuse_non_link(link)  # before a port is opened
    bus = VirtualBus(
        protocol, servos, baudrate=args.baud, wire_time=args.wire_time, faults=faults, hand=hand
    )
    previous = _stop_on_signals(bus)
    try:
        if link is not None:
            _make_link(link, bus.port)
        print(link or bus.port, flush=True)
        models = ", ".join(f"{i}:{name}" for i, name in sorted(servos.items()))
        sweep = (
            f"; a hand sweeps each joint whose torque is off: still {hand.hold_s:g} s, then "
            f"{hand.sweep_s:g} s through the joints, again and again"
            if hand
            else ""
        )
        print(
            f"emulating {f'a {args.robot}: ' if args.robot else ''}{len(servos)} {protocol} "
            f"servos ({models}) on {bus.port}{f' (linked from {link})' if link else ''}"
            f"{sweep}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        bus.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        bus.stop()
        if link is not None:
            _remove_link(link, bus.port)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def cmd_scan(args) -> int:
    from drivers.bus import BusSettings, MotorBus
    from drivers.errors import BusError
    from drivers.tables import baud_problem, model_by_number

    expected = _ids(args.ids) if args.ids else None
    protocols = ["feetech", "dynamixel"] if args.protocol == "both" else [args.protocol]
    if args.baud is not None and all(baud_problem(p, args.baud) for p in protocols):
        raise ValueError(f"--baud: {baud_problem(protocols[0], args.baud)}")
    _warn_latency(args.port)
    rows = [("protocol", "baud", "id", "model")]
    seen: set[int] = set()
    for protocol in protocols:
        if args.baud and baud_problem(protocol, args.baud):
            continue  # servos of this protocol never talk at that rate
        bauds = (
            [args.baud]
            if args.baud
            else (FEETECH_BAUDS if protocol == "feetech" else DYNAMIXEL_BAUDS)
        )
        for baud in bauds:
            settings = BusSettings(baudrate=baud, timeout_s=0.02, retries=2)
            try:
                with MotorBus(args.port, protocol, settings) as bus:
                    found = bus.broadcast_ping()
                    if found and expected:  # the bus is alive here: a lost reply is not a servo
                        found.update(_ping_each(bus, [i for i in expected if i not in found]))
            except BusError as e:
                if "cannot open" in str(e):
                    raise
                found = {}
            for servo_id, number in sorted(found.items()):
                model = model_by_number(protocol, number)
                rows.append((protocol, baud, servo_id, model.name if model else f"model {number}"))
            seen.update(found)
            done = not expected or all(i in seen for i in expected)
            if found and done and not args.all_bauds:
                break
        if expected and all(i in seen for i in expected) and not args.all_bauds:
            break
    missing = [i for i in expected if i not in seen] if expected else []
    if len(rows) == 1:
        print(
            f"no servos answered on {args.port} (protocols: {', '.join(protocols)}); check "
            "power (servos need their own supply), the cable, and that the port is the bus"
            + (f"; expected ids {expected}" if expected else "")
        )
        return 1
    print(format_table(rows))
    if missing:
        print(
            f"missing: servo(s) {missing} did not answer (expected {expected}); check their "
            "power and cables, and their ids and baud rate (each servo alone on the bus)"
        )
        return 1
    return 0


def _ping_each(bus, ids: list[int]) -> dict[int, int]:
    from drivers.errors import BusError

    out = {}
    for servo_id in ids:
        try:
            out[servo_id] = bus.ping(servo_id)
        except BusError:
            pass
    return out


def _silent(bus, servo_id: int) -> bool:
    from drivers.errors import BusError

    try:
        bus.ping(servo_id)
    except BusError:
        return True
    return False


def cmd_read(args) -> int:
    from drivers.bus import BusSettings, MotorBus
    from drivers.errors import BusTimeout
    from drivers.tables import model

    ids = _ids(args.ids)
    servo_model = model(args.model or DEFAULT_MODEL[args.protocol])
    if servo_model.protocol != args.protocol:
        raise ValueError(
            f"--model {servo_model.name} speaks {servo_model.protocol}, not {args.protocol}"
        )
    reg = servo_model.register(args.register)
    _check_baud(args.protocol, args.baud)
    _warn_latency(args.port)
    with MotorBus(args.port, args.protocol, BusSettings(baudrate=args.baud)) as bus:
        try:
            values = (
                bus.sync_read(reg, ids)
                if len(ids) > 1 and not args.one_by_one
                else {i: bus.read(i, reg) for i in ids}
            )
        except BusTimeout as e:
            silent = [i for i in ids if i == e.servo_id] or ids
            if len(ids) > 1:
                silent = [i for i in ids if _silent(bus, i)] or silent
            raise BusTimeout(
                f"no servo with id {', '.join(map(str, silent))} answered on {args.port}; "
                f"try `kiwi scan --port {args.port}` (asked in {args.protocol} at {args.baud} "
                "baud)",
                silent[0],
            ) from e
    if args.json:
        print(json.dumps({str(k): v for k, v in values.items()}))
    else:
        print(format_table([("id", args.register), *[(k, v) for k, v in values.items()]]))
    return 0


def register(sub) -> None:
    p = command(
        sub,
        "emulate-bus",
        cmd_emulate_bus,
        "emulate a bus of servos on a pseudo-terminal",
        "Serves N emulated Feetech or Dynamixel servos on a new pseudo-terminal and prints "
        "its path (first line of stdout) until interrupted (Ctrl-C, SIGTERM: the --link is "
        "removed). Anything that opens that path with pyserial (kiwi, LeRobot, the vendors' "
        "SDKs) talks the real protocol to it. Faults (--drop, --corrupt, --late, --stall) are "
        "drawn from a generator seeded with --seed.",
        "kiwi emulate-bus --protocol feetech --ids 1,2,3,4,5,6\n"
        "kiwi emulate-bus --robot koch --link /tmp/koch --wire-time\n"
        "kiwi emulate-bus --robot so101 --link /tmp/so101 --sweep   # for kiwi calibrate --yes\n"
        "kiwi emulate-bus --models 1:xl430-w250,2:xl430-w250,3:xl330-m288 --drop 0.05 "
        "--corrupt 0.05 --stall 0.01 --stall-ms 50",
    )
    p.add_argument(
        "--protocol",
        choices=["feetech", "dynamixel"],
        help="needed with --ids (--robot and --models imply it)",
    )
    p.add_argument("--ids", default="1,2,3,4,5,6", help="servo ids, comma separated")
    p.add_argument("--model", help="servo model of every id (default: sts3215 / xl330-m288)")
    p.add_argument("--models", help="servo model per id: 1:xl430-w250,2:xl430-w250,3:xl330-m288")
    p.add_argument(
        "--robot",
        choices=["so100", "so101", "koch"],
        help="the servos of this arm (koch: ids 1,2 xl430-w250, 3..6 xl330-m288)",
    )
    p.add_argument("--link", help="also make a symlink at this path to the port")
    p.add_argument("--baud", type=int, default=1_000_000, help="baud rate the wire time is for")
    p.add_argument(
        "--wire-time",
        action="store_true",
        help="delay replies by the bytes' time on a real wire at --baud",
    )
    p.add_argument("--drop", type=float, default=0.0, help="probability a reply is dropped")
    p.add_argument(
        "--corrupt", type=float, default=0.0, help="probability a reply has a byte damaged"
    )
    p.add_argument(
        "--late", type=float, default=0.0, help="probability a reply comes --late-ms late"
    )
    p.add_argument("--late-ms", type=float, default=50.0, help="how late a late reply is")
    p.add_argument(
        "--stall",
        type=float,
        default=0.0,
        help="probability a request's replies come only after --stall-ms",
    )
    p.add_argument("--stall-ms", type=float, default=50.0, help="how long a stall lasts")
    p.add_argument("--seed", type=int, default=0, help="seed of the faults' generator")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="move the joints whose torque is off as a hand would for calibration: all still "
        "at mid-range for 2 s, then each in turn to near both ends and back; repeated "
        "(so `kiwi calibrate --yes` completes with nobody there)",
    )
    p.add_argument(
        "--sweep-s",
        type=float,
        default=12.0,
        help="--sweep: seconds for one pass through every joint",
    )

    p = command(
        sub,
        "scan",
        cmd_scan,
        "find servos on a port: ids and models at each baud rate",
        "Broadcast-pings the bus in both protocols at the common baud rates and lists "
        "the servos that answer. Warns when the USB latency timer slows the port. Exits 1 "
        "when nothing answers, or when any of --ids does not.",
        "kiwi scan --port /dev/ttyACM0\nkiwi scan --port /dev/ttyUSB0 --protocol dynamixel\n"
        "kiwi scan --port /dev/ttyACM0 --ids 1,2,3,4,5,6",
    )
    p.add_argument("--port", required=True)
    p.add_argument("--protocol", choices=["feetech", "dynamixel", "both"], default="both")
    p.add_argument("--baud", type=int, help="only this baud rate")
    p.add_argument("--all-bauds", action="store_true", help="keep scanning after a hit")
    p.add_argument(
        "--ids",
        help="servo ids that must answer, comma separated: exit 1 listing those that do not",
    )

    p = command(
        sub,
        "read",
        cmd_read,
        "read a register from servos",
        "Reads one register (by its control-table name) from the given servos, with a "
        "sync read where the protocol has one.",
        "kiwi read --port /dev/ttyACM0 --protocol feetech --ids 1,2,3 "
        "--register Present_Position --json",
    )
    p.add_argument("--port", required=True)
    p.add_argument("--protocol", choices=["feetech", "dynamixel"], required=True)
    p.add_argument("--ids", required=True, help="servo ids, comma separated")
    p.add_argument("--register", default="Present_Position", help="control-table name")
    p.add_argument("--model", help="servo model whose table names the register")
    p.add_argument("--baud", type=int, default=1_000_000)
    p.add_argument("--one-by-one", action="store_true", help="READ each servo instead of SYNC_READ")
    p.add_argument("--json", action="store_true", help='print {"<id>": value}')

    register_calibrate(sub)
