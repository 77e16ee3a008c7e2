"""Bench tools for the servo bus: emulate-bus, scan, read, calibrate. Prompts live here, never in
the driver classes; none of these import torch."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from ..textui import format_table
from . import command

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
    return ids


def _warn_latency(port: str) -> None:
    from drivers.ports import latency_warning

    warning = latency_warning(port)
    if warning:
        print(warning, file=sys.stderr)


def cmd_emulate_bus(args) -> int:
    from drivers.virtual_bus import Faults, VirtualBus

    ids = _ids(args.ids)
    model = args.model or DEFAULT_MODEL[args.protocol]
    bus = VirtualBus(
        args.protocol,
        dict.fromkeys(ids, model),
        baudrate=args.baud,
        wire_time=args.wire_time,
        faults=Faults(drop=args.drop, corrupt=args.corrupt, late=args.late),
    )
    link = Path(args.link) if args.link else None
    if link is not None:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(bus.port)
    print(link or bus.port, flush=True)
    print(
        f"emulating {len(ids)} x {model} ({args.protocol}) ids {ids} on {bus.port}"
        f"{f' (linked from {link})' if link else ''}; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        bus.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        bus.stop()
        if link is not None and link.is_symlink():
            link.unlink()
    return 0


def cmd_scan(args) -> int:
    from drivers.bus import BusSettings, MotorBus
    from drivers.errors import BusError
    from drivers.tables import model_by_number

    _warn_latency(args.port)
    protocols = ["feetech", "dynamixel"] if args.protocol == "both" else [args.protocol]
    rows = [("protocol", "baud", "id", "model")]
    for protocol in protocols:
        bauds = (
            [args.baud]
            if args.baud
            else (FEETECH_BAUDS if protocol == "feetech" else DYNAMIXEL_BAUDS)
        )
        for baud in bauds:
            try:
                with MotorBus(
                    args.port, protocol, BusSettings(baudrate=baud, timeout_s=0.02, retries=0)
                ) as bus:
                    found = bus.broadcast_ping()
            except BusError as e:
                if "cannot open" in str(e):
                    raise
                found = {}
            for servo_id, number in found.items():
                model = model_by_number(protocol, number)
                rows.append((protocol, baud, servo_id, model.name if model else f"model {number}"))
            if found and not args.all_bauds:
                break
    if len(rows) == 1:
        print(
            f"no servos answered on {args.port} (protocols: {', '.join(protocols)}); check "
            "power (servos need their own supply), the cable, and that the port is the bus"
        )
        return 1
    print(format_table(rows))
    return 0


def cmd_read(args) -> int:
    from drivers.bus import BusSettings, MotorBus
    from drivers.tables import model

    ids = _ids(args.ids)
    servo_model = model(args.model or DEFAULT_MODEL[args.protocol])
    reg = servo_model.register(args.register)
    _warn_latency(args.port)
    with MotorBus(args.port, args.protocol, BusSettings(baudrate=args.baud)) as bus:
        values = (
            bus.sync_read(reg, ids)
            if len(ids) > 1 and not args.one_by_one
            else {i: bus.read(i, reg) for i in ids}
        )
    if args.json:
        print(json.dumps({str(k): v for k, v in values.items()}))
    else:
        print(format_table([("id", args.register), *[(k, v) for k, v in values.items()]]))
    return 0


def cmd_calibrate(args) -> int:
    from drivers import calibration as cal
    from drivers.arm import ARMS
    from drivers.bus import BusSettings, MotorBus
    from drivers.tables import MODELS

    config = ARMS[args.robot]
    out = Path(args.out)
    _warn_latency(args.port)
    full_turn = set(args.full_turn.split(",")) if args.full_turn else {"wrist_roll"}
    with MotorBus(args.port, config.protocol, BusSettings(baudrate=args.baud, retries=5)) as bus:
        models = {m.name: MODELS[m.model] for m in config.motors}
        reg = lambda name: models[config.motors[0].name].register(name)  # noqa: E731
        ids = [m.id for m in config.motors]
        bus.sync_write(reg("Torque_Enable"), dict.fromkeys(ids, 0))
        if config.protocol == "feetech":
            bus.sync_write(reg("Lock"), dict.fromkeys(ids, 0))
        for m in config.motors:  # start from the raw positions
            bus.write(m.id, models[m.name].register("Homing_Offset"), 0)
            bus.write(m.id, models[m.name].register("Min_Position_Limit"), 0)
            bus.write(m.id, models[m.name].register("Max_Position_Limit"), 4095)
        input(
            f"Calibrating {config.name} on {args.port}. Torque is off.\n"
            "1/2: move the arm by hand to the MIDDLE of its range of motion, then press Enter "
        )
        present = bus.sync_read(reg("Present_Position"), ids)
        offsets = {
            m.name: cal.half_turn_homing(config.protocol, present[m.id]) for m in config.motors
        }
        for m in config.motors:
            bus.write(m.id, models[m.name].register("Homing_Offset"), offsets[m.name])
        print(
            "2/2: move every joint (except " + ", ".join(sorted(full_turn)) + ") through its "
            "whole range, slowly, one after another; press Enter when done"
        )
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
        lows = bus.sync_read(reg("Present_Position"), ids)
        highs = dict(lows)
        while not done.is_set():
            now = bus.sync_read(reg("Present_Position"), ids)
            for i, v in now.items():
                lows[i], highs[i] = min(lows[i], v), max(highs[i], v)
            line = "  ".join(f"{m.name}:{lows[m.id]}-{highs[m.id]}" for m in config.motors)
            print("\r" + line, end="", flush=True)
            time.sleep(0.02)
        print()
    result = {}
    for m in config.motors:
        low, high = (0, 4095) if m.name in full_turn else (lows[m.id], highs[m.id])
        if low >= high:
            raise ValueError(f"{m.name} did not move (range {low}..{high}); run calibrate again")
        result[m.name] = cal.MotorCalibration(m.id, 0, offsets[m.name], low, high)
    cal.save(out, result)
    print(f"wrote {out} (LeRobot's layout: usable by `kiwi run --calibration {out}` and LeRobot)")
    return 0


def register(sub) -> None:
    p = command(
        sub,
        "emulate-bus",
        cmd_emulate_bus,
        "emulate a bus of servos on a pseudo-terminal",
        "Serves N emulated Feetech or Dynamixel servos on a new pseudo-terminal and prints "
        "its path (first line of stdout) until interrupted. Anything that opens that path "
        "with pyserial (kiwi, LeRobot, the vendors' SDKs) talks the real protocol to it.",
        "kiwi emulate-bus --protocol feetech --ids 1,2,3,4,5,6\n"
        "kiwi emulate-bus --protocol dynamixel --ids 1,2,3,4,5,6 --link /tmp/koch "
        "--wire-time --drop 0.01",
    )
    p.add_argument("--protocol", choices=["feetech", "dynamixel"], required=True)
    p.add_argument("--ids", default="1,2,3,4,5,6", help="servo ids, comma separated")
    p.add_argument("--model", help="servo model (default: sts3215 / xl330-m288)")
    p.add_argument("--link", help="also make a symlink at this path to the port")
    p.add_argument("--baud", type=int, default=1_000_000, help="baud rate the wire time is for")
    p.add_argument(
        "--wire-time",
        action="store_true",
        help="delay replies by the bytes' time on a real wire at --baud",
    )
    p.add_argument("--drop", type=float, default=0.0, help="probability a reply is dropped")
    p.add_argument("--corrupt", type=float, default=0.0, help="probability a reply is corrupted")
    p.add_argument("--late", type=float, default=0.0, help="probability a reply comes 50 ms late")

    p = command(
        sub,
        "scan",
        cmd_scan,
        "find servos on a port: ids and models at each baud rate",
        "Broadcast-pings the bus in both protocols at the common baud rates and lists "
        "the servos that answer. Warns when the USB latency timer slows the port.",
        "kiwi scan --port /dev/ttyACM0\nkiwi scan --port /dev/ttyUSB0 --protocol dynamixel",
    )
    p.add_argument("--port", required=True)
    p.add_argument("--protocol", choices=["feetech", "dynamixel", "both"], default="both")
    p.add_argument("--baud", type=int, help="only this baud rate")
    p.add_argument("--all-bauds", action="store_true", help="keep scanning after a hit")

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

    p = command(
        sub,
        "calibrate",
        cmd_calibrate,
        "calibrate an arm; writes LeRobot's JSON layout",
        "Interactive: with torque off, move the arm to mid-range (the homing offsets are "
        "set so it reads mid-range there), then through each joint's range (recorded as "
        "its limits). Writes a calibration file in LeRobot's layout.",
        "kiwi calibrate --robot so100 --port /dev/ttyACM0 --out calibration/so100.json",
    )
    p.add_argument("--robot", choices=["so100", "so101", "koch"], required=True)
    p.add_argument("--port", required=True)
    p.add_argument("--out", required=True, help="calibration file to write")
    p.add_argument("--baud", type=int, default=1_000_000)
    p.add_argument("--full-turn", default="", help="joints that turn freely (default wrist_roll)")
