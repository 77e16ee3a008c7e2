"""`kiwi bench bus`: a 6-servo sync-read + sync-write cycle against the emulator, our driver
beside the vendors' SDKs (PyPI dynamixel-sdk and feetech-servo-sdk) on the same emulator.

The emulator runs in its own process with wire time on (replies come after the bytes' time on a
1 Mbaud wire), so the figures are a driver's own: wall time per cycle against the wire-time
limit, and the CPU time this process spends per cycle (an SDK that polls while it waits burns
CPU the fast loop needs).
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np

from ..textui import format_table
from .common import machine, percentiles_us, write_json

IDS = [1, 2, 3, 4, 5, 6]
MODEL = {"feetech": "sts3215", "dynamixel": "xl330-m288"}


def start_emulator(protocol: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "robot_runtime.cli",
            "emulate-bus",
            "--protocol",
            protocol,
            "--ids",
            ",".join(map(str, IDS)),
            "--wire-time",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    port = proc.stdout.readline().strip()
    if not port:
        proc.kill()
        raise RuntimeError("the emulator did not start")
    return proc, port


def wire_limit_us(protocol: str, fast: bool) -> float:
    """Bytes on the wire per cycle at 1 Mbaud (10 bits a byte), from the packets themselves."""
    from drivers import dynamixel, feetech
    from drivers.tables import MODELS

    m = MODELS[MODEL[protocol]]
    pos, goal = m.register("Present_Position"), m.register("Goal_Position")
    codec = feetech if protocol == "feetech" else dynamixel
    if protocol == "dynamixel":
        request = dynamixel.sync_read(pos.address, pos.size, IDS, fast=fast)
        replies = (
            8 + len(IDS) * (pos.size + 4) if fast else len(IDS) * (dynamixel.MIN_STATUS + pos.size)
        )
    else:
        request = feetech.sync_read(pos.address, pos.size, IDS)
        replies = len(IDS) * feetech.status_length(pos.size)
    write = codec.sync_write(goal.address, goal.size, {i: bytes(goal.size) for i in IDS})
    return (len(request) + replies + len(write)) * 10.0


def goals(k: int) -> dict[int, int]:
    return {i: int(2048 + 400 * np.sin(0.01 * k + i)) for i in IDS}


def run_ours(protocol: str, port: str, cycles: int) -> dict:
    from drivers.bus import MotorBus
    from drivers.tables import MODELS

    m = MODELS[MODEL[protocol]]
    pos, goal = m.register("Present_Position"), m.register("Goal_Position")
    with MotorBus(port, protocol) as bus:
        bus.sync_write(m.register("Torque_Enable"), dict.fromkeys(IDS, 1))
        for _ in range(50):
            bus.sync_read(pos, IDS)
        times = []
        cpu0 = time.process_time()
        for k in range(cycles):
            t = time.perf_counter()
            bus.sync_read(pos, IDS)
            bus.sync_write(goal, goals(k))
            times.append(time.perf_counter() - t)
        cpu = time.process_time() - cpu0
        p50, p99 = percentiles_us(times)
        return {
            "cycle_us_p50": p50,
            "cycle_us_p99": p99,
            "cpu_us_per_cycle": cpu / cycles * 1e6,
            "retries": bus.stats.retries,
            "failures": bus.stats.failures,
        }


def run_sdk(protocol: str, port: str, cycles: int, fast: bool = False) -> dict | None:
    """The same cycle with the vendor's SDK (GroupSyncRead / GroupSyncWrite)."""
    try:
        if protocol == "feetech":
            import scservo_sdk as sdk

            handler = sdk.PacketHandler(0)
        else:
            import dynamixel_sdk as sdk

            handler = sdk.PacketHandler(2.0)
    except ImportError:
        return None
    from drivers.tables import MODELS

    m = MODELS[MODEL[protocol]]
    pos, goal = m.register("Present_Position"), m.register("Goal_Position")
    port_h = sdk.PortHandler(port)
    port_h.openPort()
    port_h.setBaudRate(1_000_000)
    reader = sdk.GroupSyncRead(port_h, handler, pos.address, pos.size)
    writer = sdk.GroupSyncWrite(port_h, handler, goal.address, goal.size)
    for i in IDS:
        reader.addParam(i)
    ok = sdk.COMM_SUCCESS
    read = reader.fastSyncRead if fast else reader.txRxPacket
    try:
        for _ in range(50):
            read()
        times, errors = [], 0
        cpu0 = time.process_time()
        for k in range(cycles):
            t = time.perf_counter()
            if read() != ok:
                errors += 1
            values = [reader.getData(i, pos.address, pos.size) for i in IDS]  # noqa: F841
            writer.clearParam()
            for i, v in goals(k).items():
                writer.addParam(i, list(v.to_bytes(goal.size, "little")))
            writer.txPacket()
            times.append(time.perf_counter() - t)
        cpu = time.process_time() - cpu0
    finally:
        port_h.closePort()
    p50, p99 = percentiles_us(times)
    return {
        "cycle_us_p50": p50,
        "cycle_us_p99": p99,
        "cpu_us_per_cycle": cpu / cycles * 1e6,
        "errors": errors,
    }


def run(args) -> int:
    cycles = 300 if args.quick else 2000
    results, rows = (
        {},
        [("protocol", "driver", "cycle p50 µs", "cycle p99 µs", "CPU µs/cycle", "wire limit µs")],
    )
    for protocol in ("feetech", "dynamixel"):
        proc, port = start_emulator(protocol)
        try:
            ours = run_ours(protocol, port, cycles)
            sdk = run_sdk(protocol, port, cycles)
            sdk_fast = (
                run_sdk(protocol, port, cycles, fast=True) if protocol == "dynamixel" else None
            )
        finally:
            proc.terminate()
            proc.wait(timeout=5)
        fast = protocol == "dynamixel"
        limit = wire_limit_us(protocol, fast)
        best_sdk = min(
            (r for r in (sdk, sdk_fast) if r), key=lambda r: r["cpu_us_per_cycle"], default=None
        )
        results[protocol] = {
            **ours,
            "wire_limit_us": limit,
            "sdk_cpu_us_per_cycle": best_sdk["cpu_us_per_cycle"] if best_sdk else None,
            "sdk": sdk,
            "sdk_fast_sync_read": sdk_fast,
            "cycles": cycles,
        }
        rows.append(
            (
                protocol,
                "kiwi" + (" (fast sync read)" if fast else ""),
                f"{ours['cycle_us_p50']:.0f}",
                f"{ours['cycle_us_p99']:.0f}",
                f"{ours['cpu_us_per_cycle']:.0f}",
                f"{limit:.0f}",
            )
        )
        for label, r in (("vendor SDK", sdk), ("vendor SDK (fast sync read)", sdk_fast)):
            if r:
                rows.append(
                    (
                        protocol,
                        label,
                        f"{r['cycle_us_p50']:.0f}",
                        f"{r['cycle_us_p99']:.0f}",
                        f"{r['cpu_us_per_cycle']:.0f}",
                        "",
                    )
                )
    print(format_table(rows))
    for protocol, r in results.items():
        if r["sdk_cpu_us_per_cycle"] is None:
            print(f"{protocol}: vendor SDK not installed (pip install -e '.[dev]'); no comparison")
        else:
            ratio = r["sdk_cpu_us_per_cycle"] / max(r["cpu_us_per_cycle"], 1e-9)
            print(
                f"{protocol}: kiwi spends {ratio:.1f}x less CPU per cycle than the vendor SDK"
                if ratio > 1
                else f"{protocol}: MISSED: the vendor SDK spends less CPU "
                f"({r['sdk_cpu_us_per_cycle']:.0f} vs {r['cpu_us_per_cycle']:.0f} µs)"
            )
    write_json(args.json, {**results, "machine": machine()})
    return 0
