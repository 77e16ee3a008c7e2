"""Long runs of `kiwi run` on the servo emulator: `kiwi bench soak` and `kiwi bench faults`.

Both start the emulator (a thread of this process, faults as asked), `kiwi run` as its own
process on the emulated port, and a poster thread standing in for the slow process (an
observation with a short action chunk at 5 Hz, captured 150 ms before it is sent, on the shared
monotonic clock). Every ``sample_s`` they ask the runtime's status over its query socket and
read its resident memory from /proc.

- soak: memory after the first minute must grow by less than 2 MiB in all (issue 9);
- faults: 5 % dropped + 5 % corrupted replies (+ 1 % of cycles stalled 50 ms), Feetech and
  Dynamixel: the run must not stop; ticks held, retries and overruns are reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import machine, write_json

ROBOTS = {"feetech": "so101", "dynamixel": "koch"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS for process {pid}")


@dataclass
class Sample:
    t_s: float
    rss_mib: float
    ticks: int
    overruns: int
    applied: int
    held: int
    retries: int


def emulated_calibration(config) -> dict:
    """A LeRobot-layout calibration for an emulated arm: every joint centred, a range of
    half a turn."""
    return {
        m.name: {
            "id": m.id,
            "drive_mode": 0,
            "homing_offset": 0,
            "range_min": 1024,
            "range_max": 3072,
        }
        for m in config.motors
    }


class Poster(threading.Thread):
    """The slow process's stand-in: observations (+ a short chunk around the middle pose)."""

    def __init__(self, address: str, rate_hz: float = 5.0, latency_s: float = 0.15):
        super().__init__(daemon=True)
        self.address, self.period, self.latency = address, 1.0 / rate_hz, latency_s
        self.stop_event = threading.Event()
        self.sent = 0

    def run(self) -> None:
        import zmq

        from .. import link

        ctx = link.Context()
        push = ctx.connect(zmq.PUSH, self.address, hwm=16)
        rng = np.random.default_rng(0)
        try:
            while not self.stop_event.wait(self.period):
                t = time.monotonic()
                phase = 0.5 * t
                target = np.array([10 * np.sin(phase), 5 * np.cos(phase), 0, 0, 0, 50.0])
                chunk = np.repeat(target[None], 25, 0).astype(np.float32)
                obj = np.array([0.0, 0.01, 0.2, 5.0], np.float32) + rng.normal(0, 1e-3, 4)
                push.send_multipart(
                    link.encode(
                        "obs",
                        {
                            "state": target.astype(np.float32),
                            "object": obj.astype(np.float32),
                            "actions": chunk,
                        },
                        seq=self.sent,
                        t_capture=t - self.latency,
                        meta={"t_first": t, "dt": 0.02},
                    ),
                    flags=zmq.NOBLOCK,
                )
                self.sent += 1
        except zmq.Again:
            pass
        finally:
            ctx.close()


def emulated_run(
    protocol: str,
    seconds: float,
    sample_s: float,
    faults=None,
    checkpoint: str | None = None,
    progress=None,
    overrides_extra: list[str] | tuple[str, ...] = (),
) -> dict:
    """`kiwi run` for ``seconds`` on an emulated arm with a poster; samples as it goes."""
    import zmq

    from drivers.arm import ARMS
    from drivers.virtual_bus import VirtualBus

    from .. import link
    from ..dryrun import free_ports

    robot = ROBOTS[protocol]
    config = ARMS[robot]
    tmp = Path(tempfile.mkdtemp(prefix="kiwi-endurance-"))
    cal = tmp / f"{robot}.json"
    cal.write_text(json.dumps(emulated_calibration(config)))
    obs, query, tele = (f"tcp://127.0.0.1:{p}" for p in free_ports(3))
    overrides = [f"link.obs={obs}", f"link.query={query}", f"link.telemetry={tele}"]
    if checkpoint:
        overrides.append(f"runtime.checkpoint={checkpoint}")
    overrides += list(overrides_extra)
    samples: list[Sample] = []
    with VirtualBus.for_arm(config, faults=faults) as bus:
        cmd = [sys.executable, "-m", "robot_runtime.cli", "run", "--robot", robot]
        cmd += ["--port", bus.port, "--calibration", str(cal), "--duration", str(seconds)]
        cmd += ["--json", "--controller", "chunk", "--out", str(tmp / "run")]
        cmd += [a for o in overrides for a in ("--set", o)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "ready":
                break
        else:
            raise ChildProcessError("kiwi run did not start: " + "".join(lines)[-500:])
        poster = Poster(obs)
        poster.start()
        ctx = link.Context()
        req = ctx.connect(zmq.REQ, query)
        t0 = time.monotonic()
        try:
            while proc.poll() is None and time.monotonic() - t0 < seconds - 1:
                time.sleep(sample_s)
                req.send_multipart(link.encode("status"))
                if not req.poll(3000):
                    break
                m = link.decode(req.recv_multipart()).header.meta
                bus_stats = m["bus"]
                s = Sample(
                    time.monotonic() - t0,
                    rss_mib(proc.pid),
                    m["loop"]["ticks"],
                    m["loop"]["overruns"],
                    m["estimator"]["applied"],
                    bus_stats["health"]["failed"],
                    bus_stats.get("retries", 0),
                )
                samples.append(s)
                if progress:
                    progress(s)
        finally:
            poster.stop_event.set()
            ctx.close()
            out, _ = proc.communicate(timeout=120)
        lines.append(out)
    text = "".join(lines)
    result = json.loads(text.strip().splitlines()[-1]) if proc.returncode in (0, 1) else {}
    return {
        "protocol": protocol,
        "robot": robot,
        "returncode": proc.returncode,
        "result": result,
        "samples": [s.__dict__ for s in samples],
        "output_tail": text[-2000:],
    }


def _print_samples(s: Sample) -> None:
    print(
        f"  {s.t_s / 60:6.1f} min  RSS {s.rss_mib:7.2f} MiB  ticks {s.ticks:7d}  "
        f"overruns {s.overruns:4d}  applied {s.applied:5d}  held {s.held:4d}  "
        f"retries {s.retries:5d}",
        flush=True,
    )


def run_soak(args) -> int:
    seconds = args.minutes * 60
    print(
        f"soak: `kiwi run` on an emulated {ROBOTS[args.protocol]} for {args.minutes:g} min, "
        f"a poster at 5 Hz; RSS sampled every {args.sample_s:g} s"
    )
    run = emulated_run(args.protocol, seconds, args.sample_s, progress=_print_samples)
    samples = run["samples"]
    after = [s for s in samples if s["t_s"] >= 60]
    growth = after[-1]["rss_mib"] - after[0]["rss_mib"] if len(after) >= 2 else float("nan")
    peak = max(s["rss_mib"] for s in after) - after[0]["rss_mib"] if after else float("nan")
    figures = {
        "machine": machine(),
        "minutes": args.minutes,
        "rss_mib_at_1min": after[0]["rss_mib"] if after else None,
        "rss_mib_end": samples[-1]["rss_mib"] if samples else None,
        "growth_after_1min_mib": growth,
        "peak_over_1min_mib": peak,
        "target_mib": 2.0,
        "returncode": run["returncode"],
        "loop": run["result"].get("loop"),
        "samples": samples,
    }
    print(
        f"RSS after the first minute: {figures['rss_mib_at_1min']} MiB -> "
        f"{figures['rss_mib_end']} MiB at the end: growth {growth:.2f} MiB (peak {peak:.2f}); "
        f"target < 2 MiB: {'met' if growth < 2 else 'MISSED'}"
    )
    if args.plot and samples:
        _plot(samples, args.plot)
    write_json(args.json, figures)
    return 0 if run["returncode"] == 0 else 1


def run_faults(args) -> int:
    from drivers.virtual_bus import Faults

    seconds = args.minutes * 60
    rows, out = [], {"machine": machine(), "minutes": args.minutes, "runs": []}
    for protocol in args.protocols.split(","):
        faults = Faults(
            drop=args.drop,
            corrupt=args.corrupt,
            stall=args.stall,
            stall_s=args.stall_ms / 1000,
            seed=args.seed,
        )
        print(
            f"{protocol}: {args.drop:.0%} dropped + {args.corrupt:.0%} corrupted replies, "
            f"{args.stall:.0%} of cycles stalled {args.stall_ms:g} ms, {args.minutes:g} min"
        )
        run = emulated_run(
            protocol,
            seconds,
            args.sample_s,
            faults,
            progress=_print_samples,
            overrides_extra=args.overrides,
        )
        r = run["result"]
        bus = r.get("bus", {})
        row = {
            "protocol": protocol,
            "stopped": r.get("fault"),
            "returncode": run["returncode"],
            "ticks": r.get("loop", {}).get("ticks"),
            "overruns": r.get("loop", {}).get("overruns"),
            "held": bus.get("health", {}).get("failed"),
            "worst_consecutive": bus.get("health", {}).get("worst_consecutive"),
            "retries": bus.get("retries"),
            "timeouts": bus.get("timeouts"),
            "corrupt": bus.get("corrupt"),
            "applied": r.get("estimator", {}).get("applied"),
        }
        rows.append(row)
        out["runs"].append({**row, "bus": bus, "loop": r.get("loop")})
        print(json.dumps(row))
    write_json(args.json, out)
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


def _plot(samples: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, [s["rss_mib"] for s in samples], marker=".")
    ax.axvline(1.0, color="grey", linestyle=":", label="first minute")
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("kiwi run on the emulator: resident memory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
