"""`kiwi calibrate`: LeRobot's calibration procedure on a servo bus, attended or unattended.

With torque off: (1) the arm is held at the middle of its range, and each servo's homing offset
is set so that it reads half a turn there; (2) every joint but the free-turning ones is moved
through its whole range, recorded as its limits. Attended, the person presses Enter after each
step (stdin must be a terminal: ``input()`` is never called otherwise). With ``--yes`` nobody
presses anything: step 1 ends when the arm has been still for ``--still-s``, step 2 when every
recorded joint has moved through ``--min-travel`` ticks and the arm is still again.

Everything is checked before it is written: the offsets before they reach EEPROM; the whole
result (``calibration.validate`` and the travel of each joint) before the limits reach EEPROM and
before the file is written (atomically; an existing file only with ``--overwrite``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

SAMPLE_PERIOD_S = 0.02  # LeRobot's record_ranges_of_motion reads every 20 ms


def cmd_calibrate(args) -> int:
    from drivers import calibration as cal
    from drivers.arm import ARMS, check_servos
    from drivers.bus import BusSettings, MotorBus
    from drivers.ports import latency_warning
    from drivers.tables import MODELS, baud_problem

    config = ARMS[args.robot]
    names = [m.name for m in config.motors]
    full_turn = _full_turn(args.full_turn, config)
    out = _writable(Path(args.out), args.overwrite)
    if not args.yes and not sys.stdin.isatty():
        raise ValueError(
            "calibrate waits for you to move the arm and press Enter, but stdin is not a "
            "terminal: pass --yes to calibrate unattended, or run it in a terminal"
        )
    problem = baud_problem(config.protocol, args.baud)
    if problem:
        raise ValueError(f"--baud: {problem}")
    if args.still_s <= 0 or args.timeout_s <= 0 or args.min_travel < 1:
        raise ValueError("--still-s and --timeout-s must be > 0, --min-travel at least 1")
    warning = latency_warning(args.port)
    if warning:
        print(warning, file=sys.stderr)
    models = {m.name: MODELS[m.model] for m in config.motors}
    reg = models[names[0]].register  # the registers calibrate uses sit alike in every model
    ids = [m.id for m in config.motors]
    recorded = [m.id for m in config.motors if m.name not in full_turn]
    unattended = _Unattended(args, recorded) if args.yes else None
    with MotorBus(args.port, config.protocol, BusSettings(baudrate=args.baud, retries=5)) as bus:
        check_servos(bus, config)
        bus.sync_write(reg("Torque_Enable"), dict.fromkeys(ids, 0))
        if config.protocol == "feetech":
            bus.sync_write(reg("Lock"), dict.fromkeys(ids, 0))
        for m in config.motors:  # start from the raw positions
            bus.write(m.id, models[m.name].register("Homing_Offset"), 0)
            bus.write(m.id, models[m.name].register("Min_Position_Limit"), 0)
            bus.write(m.id, models[m.name].register("Max_Position_Limit"), 4095)
        print(f"Calibrating {config.name} on {args.port}. Torque is off.")
        step1 = "1/2: move the arm by hand to the MIDDLE of its range of motion"
        if unattended is None:
            try:
                input(step1 + ", then press Enter ")
            except EOFError:  # Ctrl-D
                raise ValueError("calibrate: input ended before step 1; nothing saved") from None
            middle = bus.sync_read(reg("Present_Position"), ids)
        else:
            print(f"{step1}; taken once it has been still for {args.still_s:g} s", flush=True)
            middle = _record(bus, reg("Present_Position"), ids, unattended.middle_done).last
        offsets = {
            m.name: cal.half_turn_homing(config.protocol, middle[m.id]) for m in config.motors
        }
        for m in config.motors:  # checked before any reaches EEPROM
            problem = cal.value_problem(
                "homing_offset", offsets[m.name], models[m.name], "Homing_Offset"
            )
            if problem is not None:
                raise ValueError(
                    f"calibrate {config.name}: motor {m.name}: {problem}; it reads "
                    f"{middle[m.id]}: move it nearer the middle of its range and run calibrate "
                    "again"
                )
        for m in config.motors:
            bus.write(m.id, models[m.name].register("Homing_Offset"), offsets[m.name])
        step2 = (
            f"2/2: move every joint (except {', '.join(sorted(full_turn))}) through its whole "
            "range, slowly, one after another"
        )
        if unattended is None:
            print(step2 + "; press Enter when done")
            done = threading.Event()
            threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
            ranges = _record(bus, reg("Present_Position"), ids, lambda rec: done.is_set(), config)
        else:
            print(
                f"{step2}; done once each has moved through {args.min_travel} ticks and the arm "
                f"has been still for {args.still_s:g} s",
                flush=True,
            )
            ranges = _record(bus, reg("Present_Position"), ids, unattended.ranges_done, config)
        result = {}
        for m in config.motors:
            low, high = (
                (0, 4095) if m.name in full_turn else (ranges.lows[m.id], ranges.highs[m.id])
            )
            result[m.name] = cal.MotorCalibration(m.id, 0, offsets[m.name], low, high)
        source = f"calibrate {config.name}"
        for m in config.motors:  # the whole result, before the limits reach EEPROM
            problem = (
                None
                if m.name in full_turn
                else cal.travel_problem(
                    result[m.name].range_min, result[m.name].range_max, args.min_travel
                )
            )
            if problem:
                raise ValueError(f"{source}: motor {m.name} {problem}; run calibrate again")
        cal.validate(result, source, {m.name: m.id for m in config.motors}, models)
        for m in config.motors:
            bus.write(m.id, models[m.name].register("Min_Position_Limit"), result[m.name].range_min)
            bus.write(m.id, models[m.name].register("Max_Position_Limit"), result[m.name].range_max)
    cal.save(out, result)
    for m in config.motors:
        c = result[m.name]
        print(
            f"  {m.name:<14} id {c.id}  offset {c.homing_offset:>5}  "
            f"range {c.range_min}..{c.range_max}"
        )
    print(f"wrote {out} (LeRobot's layout: usable by `kiwi run --calibration {out}` and LeRobot)")
    return 0


class _Unattended:
    """When each step of an unattended (--yes) calibration is over; a step that never ends
    within --timeout-s is an error that says what was missing."""

    def __init__(self, args, recorded: list[int]):
        self.still_s, self.timeout_s = args.still_s, args.timeout_s
        self.min_travel, self.recorded = args.min_travel, recorded
        self.t0 = time.monotonic()

    def middle_done(self, rec) -> bool:
        if rec.still_s >= self.still_s:
            self.t0 = time.monotonic()  # step 2's time starts now
            return True
        if time.monotonic() - self.t0 > self.timeout_s:
            raise ValueError(
                f"calibrate: the arm was not still for {self.still_s:g} s within "
                f"{self.timeout_s:g} s (--timeout-s); hold it at the middle of its range"
            )
        return False

    def ranges_done(self, rec) -> bool:
        short = [i for i in self.recorded if rec.travel(i) < self.min_travel]
        if not short and rec.still_s >= self.still_s:
            return True
        if time.monotonic() - self.t0 > self.timeout_s:
            reason = (
                f"servo(s) {short} moved through fewer than {self.min_travel} ticks"
                if short
                else f"the arm was never still for {self.still_s:g} s afterwards"
            )
            raise ValueError(
                f"calibrate: after {self.timeout_s:g} s (--timeout-s), {reason}; move each joint "
                "through its whole range, then let go"
            )
        return False


def _record(bus, reg, ids, done, config=None):
    """Reads the positions every SAMPLE_PERIOD_S into a MotionRecorder until ``done(recorder)``;
    shows each joint's range as it grows on a terminal (``config``: the joints' names)."""
    from drivers.calibration import MotionRecorder

    rec = MotionRecorder()
    live = config is not None and sys.stdout.isatty()
    while True:
        rec.add(time.monotonic(), bus.sync_read(reg, ids))
        if live:
            line = "  ".join(f"{m.name}:{rec.lows[m.id]}-{rec.highs[m.id]}" for m in config.motors)
            print("\r" + line, end="", flush=True)
        if done(rec):
            break
        time.sleep(SAMPLE_PERIOD_S)
    if live:
        print()
    return rec


def _full_turn(text: str, config) -> set[str]:
    names = [m.name for m in config.motors]
    if not text:
        return set(config.full_turn)
    chosen = {x.strip() for x in text.split(",") if x.strip()}
    unknown = sorted(chosen - set(names))
    if unknown:
        raise ValueError(
            f"--full-turn: {config.name} has no joint {unknown}; its joints: {', '.join(names)}"
        )
    return chosen


def _writable(out: Path, overwrite: bool) -> Path:
    """``out``, once it is known the file can be written: checked before the bus is touched."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name (e.g. {out}/so101.json)")
    if out.exists() and not overwrite:
        raise ValueError(f"--out {out} exists; pass --overwrite to replace it")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:  # os.access says yes to root everywhere: try it (a real file, removed at once)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{out.name}.", suffix=".probe")
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {parent}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)
    return out


def register(sub) -> None:
    from . import command

    p = command(
        sub,
        "calibrate",
        cmd_calibrate,
        "calibrate an arm; writes LeRobot's JSON layout",
        "With torque off, the arm is held at mid-range (the homing offsets are set so it reads "
        "mid-range there), then each joint is moved through its range (recorded as its "
        "limits). Attended, you press Enter after each step (stdin must be a terminal). With "
        "--yes it runs unattended: step 1 ends when the arm has been still for --still-s, step "
        "2 when every joint has moved through --min-travel ticks and the arm is still again "
        "(`kiwi emulate-bus --sweep` moves an emulated arm so). The result is checked before "
        "its limits reach EEPROM and before the file is written (in LeRobot's layout).",
        "kiwi calibrate --robot so101 --port /dev/ttyACM0 --out calibration/so101.json\n"
        "kiwi emulate-bus --robot so101 --link /tmp/so101 --sweep &\n"
        "kiwi calibrate --robot so101 --port /tmp/so101 --out so101.json --yes",
    )
    p.add_argument("--robot", choices=["so100", "so101", "koch"], required=True)
    p.add_argument("--port", required=True)
    p.add_argument("--out", required=True, help="calibration file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--baud", type=int, default=1_000_000)
    p.add_argument(
        "--full-turn",
        default="",
        help="joints that turn freely, comma separated (default: so100/so101 wrist_roll; koch "
        "shoulder_pan,wrist_roll)",
    )
    p.add_argument("--yes", action="store_true", help="unattended: no prompts, no Enter")
    p.add_argument("--still-s", type=float, default=1.0, help="--yes: how long still ends a step")
    p.add_argument(
        "--min-travel",
        type=int,
        default=200,
        help="ticks each recorded joint must move through (--yes: before step 2 can end)",
    )
    p.add_argument(
        "--timeout-s", type=float, default=120.0, help="--yes: longest wait for each step"
    )
