"""`kiwi bench link`: one observation hop over loopback ZeroMQ, from the sender's send to the
receiver's decoded observation.

The sender is its own process (``python -m robot_runtime.bench.link``): a PUSH socket posting a
64x64x3 uint8 image plus a 16-dim float32 state at a modest rate (1 kHz by default, so the figure
is per-message latency, not queueing). Each message carries ``t_capture = time.monotonic()`` taken
just before it is encoded; the receiver (PULL, bound on tcp://127.0.0.1) calls ``decode`` and
takes the time again. Both processes read the same CLOCK_MONOTONIC on Linux, so the difference is
the hop: encode + send + loopback TCP + receive + decode.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from .. import link
from ..textui import format_table
from .common import machine, percentiles_us, verdict, write_json

IMAGE_SHAPE = (64, 64, 3)
STATE_DIM = 16
WARMUP = 50  # first messages dropped: they include the connection's setup
TARGETS_US = {"hop_us_p50": 200.0, "hop_us_p99": 1000.0}


def observation_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8),
        "state": rng.normal(size=STATE_DIM).astype(np.float32),
    }


def send_observations(address: str, count: int | None, rate_hz: float) -> None:
    """Posts observations to ``address`` at ``rate_hz`` (``count`` of them, or until killed).
    Paces with plain sleeps on an absolute schedule: no spinning, so it leaves the CPU alone."""
    import zmq

    ctx = link.Context()
    sock = ctx.connect(zmq.PUSH, address, hwm=16)
    arrays = observation_arrays()
    period = 1.0 / rate_hz
    t0 = time.monotonic()
    k = 0
    try:
        while count is None or k < count:
            delay = t0 + k * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            arrays["state"][0] = k  # something changes from message to message
            sock.send_multipart(
                link.encode("obs", arrays, seq=k, t_capture=time.monotonic()), copy=False
            )
            k += 1
    finally:
        sock.setsockopt(zmq.LINGER, 1000)  # let the last messages out before closing
        sock.close()


def start_sender(address: str, count: int | None, rate_hz: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "robot_runtime.bench.link", address, "--rate-hz", str(rate_hz)]
    if count is not None:
        cmd += ["--count", str(count)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load_note() -> str:
    """The 1-minute load average beside the core count: jitter figures mean little on a busy
    machine, so every run says how busy it was."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = " (busy: other processes compete for the cores)" if load > 0.5 * cores else ""
    return f"load average {load:.2f} on {cores} cores{busy}"


def bind_receiver(ctx: link.Context, socket_type: int, hwm: int = 16):
    """A socket bound on a free loopback port, and the address it got."""
    import zmq

    sock = ctx.bind(socket_type, "tcp://127.0.0.1:*", hwm=hwm)
    return sock, sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def measure(count: int, rate_hz: float, first_timeout_s: float = 20.0) -> dict:
    """Receives ``count`` timed messages (after WARMUP); returns the hop's figures."""
    import zmq

    ctx = link.Context()
    sock, address = bind_receiver(ctx, zmq.PULL)
    proc = start_sender(address, None, rate_hz)  # stopped once ``count`` have arrived
    hop_s, decode_s, message_bytes, rejected = [], [], 0, 0
    try:
        timeout_ms = int(first_timeout_s * 1000)
        while len(hop_s) < count:
            if not sock.poll(timeout_ms):
                break  # the sender died or stopped early: report what arrived
            timeout_ms = 2000
            frames = sock.recv_multipart(copy=False)
            t_received = time.monotonic()
            try:
                msg = link.decode([f.buffer for f in frames])
            except link.MessageError:
                rejected += 1
                continue
            t_decoded = time.monotonic()
            if msg.header.seq < WARMUP:
                continue
            hop_s.append(t_decoded - msg.header.t_capture)
            decode_s.append(t_decoded - t_received)
            message_bytes = sum(len(f.buffer) for f in frames)
    finally:
        stop(proc)
        sock.close()
        ctx.close()
    if not hop_s:
        raise RuntimeError("no observation arrived from the sender process")
    p50, p99 = percentiles_us(hop_s)
    return {
        "hop_us_p50": p50,
        "hop_us_p99": p99,
        "hop_us_max": float(np.max(hop_s) * 1e6),
        "decode_us_p50": percentiles_us(decode_s)[0],
        "count": len(hop_s),
        "expected": count,
        "rejected": rejected,
        "message_bytes": message_bytes,
        "rate_hz": rate_hz,
    }


def run(args) -> int:
    count = 500 if args.quick else args.count
    if count < 1 or not args.rate_hz > 0:
        raise ValueError("--count and --rate-hz must be positive")
    print(
        f"one hop: PUSH (own process) -> PULL on tcp://127.0.0.1, {IMAGE_SHAPE} uint8 image + "
        f"{STATE_DIM} float32 state, {count} messages at {args.rate_hz:g} Hz"
    )
    r = measure(count, args.rate_hz)
    rows = [("figure", "value", "target", "")]
    for key in ("hop_us_p50", "hop_us_p99"):
        target = TARGETS_US[key]
        rows.append((f"{key} [µs]", f"{r[key]:.0f}", f"<= {target:g}", verdict(r[key], target)))
    rows.append(("hop_us_max [µs]", f"{r['hop_us_max']:.0f}", "", ""))
    rows.append(("decode_us_p50 [µs]", f"{r['decode_us_p50']:.0f}", "", ""))
    rows.append(("messages", f"{r['count']} of {count}", "", ""))
    rows.append(("message bytes", str(r["message_bytes"]), "", ""))
    print(format_table(rows))
    client = client_round_trip(200 if args.quick else 1000)
    print(load_note())
    write_json(
        args.json,
        {
            **r,
            "targets": TARGETS_US,
            "client": client,
            "load_avg_1min": os.getloadavg()[0],
            "machine": machine(),
        },
    )
    return 0 if r["count"] == count else 1


def client_round_trip(count: int, rate_hz: float = 100.0) -> dict:
    """The slow-process client's frame-out, chunk-in round trip and its clock offset error
    (bench/client_link.py); prints the table, returns the figures."""
    from .client_link import TARGET_US_P99, measure_client

    print(
        f"\nslow-process client round trip: 128x128x3 frame out (PUB), chunk [50, 6] in (PULL), "
        f"client in its own process with a zero-cost policy, {count} frames at {rate_hz:g} Hz"
    )
    c = measure_client(count, rate_hz)
    p99 = c["round_trip_us_p99"]
    rows = [("figure", "value", "target", "")]
    rows.append(("round_trip_us_p50 [µs]", f"{c['round_trip_us_p50']:.0f}", "", ""))
    rows.append(
        (
            "round_trip_us_p99 [µs]",
            f"{p99:.0f}",
            f"<= {TARGET_US_P99:g}",
            verdict(p99, TARGET_US_P99),
        )
    )
    rows.append(("round_trip_us_max [µs]", f"{c['round_trip_us_max']:.0f}", "", ""))
    for key in ("client_us_p50", "client_us_p99"):
        rows.append((f"{key} [µs]", f"{c[key]:.0f}", "", "inside the client"))
    rows.append(("round trips", f"{c['round_trips']} of {count}", "", ""))
    rows.append(
        (
            f"clock offset error [µs] (+{c['artificial_offset_s']:g} s)",
            f"{c['clock_offset_error_us']:.0f}",
            "",
            f"rtt {c['clock_rtt_us']:.0f} µs",
        )
    )
    print(format_table(rows))
    c["targets"] = {"round_trip_us_p99": TARGET_US_P99}
    return c


def main(argv: list[str] | None = None) -> None:
    """The sender process: ``python -m robot_runtime.bench.link ADDRESS [--count N]``."""
    p = argparse.ArgumentParser(description="post benchmark observations to a PULL socket")
    p.add_argument("address")
    p.add_argument("--count", type=int, help="messages to send (default: until terminated)")
    p.add_argument("--rate-hz", type=float, default=1000.0)
    args = p.parse_args(argv)
    try:
        send_observations(args.address, args.count, args.rate_hz)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
