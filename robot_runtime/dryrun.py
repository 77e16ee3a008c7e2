"""`kiwi sim`: the dry run. Starts the simulated world, the slow process and the runtime as
separate processes on loopback, shows live status, and ends with a summary and a run folder:
``config.yaml``, ``telemetry.jsonl``, ``truth.jsonl``, ``summary.json`` and
``estimate_vs_truth.png`` (the latent's cube estimate against the simulator's truth).

The ground truth (``truth`` messages of the simulated world) feeds only this display and the
summary; the runtime never sees it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import link
from .config import GraspJob, dump_config
from .textui import format_table

LINK_KEYS = ("obs", "query", "telemetry", "camera", "command", "sim_state")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _child(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT, env=env
        )


class Recorder:
    """Subscribes to the runtime's telemetry and the world's truth; keeps what the summary,
    the plot and the live line need."""

    def __init__(self, ctx: link.Context, job: GraspJob, out: Path):
        import zmq

        self.tele = ctx.connect(zmq.SUB, job.link.telemetry, hwm=1000)
        self.truth = ctx.connect(zmq.SUB, job.link.sim_state, hwm=1000)
        for s in (self.tele, self.truth):
            s.setsockopt(zmq.SUBSCRIBE, b"")
        self.tele_log = open(out / "telemetry.jsonl", "w")
        self.truth_log = open(out / "truth.jsonl", "w")
        self.estimates: list[tuple[float, np.ndarray]] = []
        self.truths: list[tuple[float, np.ndarray, bool, int]] = []
        self.events: list[dict] = []
        self.last: dict = {}
        self.counter: dict = {}

    def poll(self) -> None:
        for msg in link.drain(self.tele, self.counter, 1000):
            rec = {
                "t": msg.header.t_capture,
                "kind": msg.kind,
                **msg.header.meta,
                **{k: v.tolist() for k, v in msg.arrays.items()},
            }
            self.tele_log.write(json.dumps(rec) + "\n")
            if msg.kind == "telemetry":
                self.estimates.append(
                    (msg.header.t_capture, np.array(msg.arrays["object_estimate"]))
                )
                self.last = rec
            elif msg.kind == "event":
                self.events.append(rec)
        for msg in link.drain(self.truth, self.counter, 1000):
            if msg.kind != "truth":
                continue
            t = msg.header.t_capture
            self.truths.append(
                (
                    t,
                    np.array(msg.arrays["object_true"]),
                    bool(msg.header.meta.get("is_success")),
                    int(msg.header.meta.get("episode", -1)),
                )
            )
            if len(self.truths) % 5 == 1:
                self.truth_log.write(
                    json.dumps(
                        {
                            "t": t,
                            **msg.header.meta,
                            "object_true": msg.arrays["object_true"].tolist(),
                        }
                    )
                    + "\n"
                )

    def close(self) -> None:
        self.tele_log.close()
        self.truth_log.close()
        self.tele.close(0)
        self.truth.close(0)


def estimate_errors(estimates, truths) -> np.ndarray:
    """Per telemetry sample: (position error mm, yaw error deg) against the nearest truth."""
    if not estimates or not truths:
        return np.zeros((0, 2))
    t_truth = np.array([t for t, *_ in truths])
    out = []
    for t, est in estimates:
        i = int(np.clip(np.searchsorted(t_truth, t), 0, len(truths) - 1))
        true = truths[i][1]
        pos = float(np.linalg.norm(est[:3] - true[:3]) * 1000)
        yaw = abs((est[3] - true[3] + 45.0) % 90.0 - 45.0)
        out.append((pos, yaw))
    return np.array(out)


def status_line(rec: Recorder, attempt: int, attempts: int) -> str:
    last = rec.last
    if not last:
        return "waiting for the runtime..."
    est = last.get("estimator", {})
    errs = estimate_errors(rec.estimates[-50:], rec.truths[-400:])
    err = f"{np.median(errs[:, 0]):5.1f} mm {np.median(errs[:, 1]):4.1f} deg" if len(errs) else "-"
    decisions = [e for e in rec.events if e.get("phase") == "decision"]
    gate = f"  P={decisions[-1]['p_success']:.2f} {decisions[-1]['verdict']}" if decisions else ""
    return (
        f"attempt {attempt}/{attempts}  {last.get('phase', '?'):9s} "
        f"jitter p99 {last.get('jitter_us_p99', 0):6.0f} µs  overruns {last.get('overruns', 0)}  "
        f"obs {est.get('applied', 0)} (age {est.get('last_age_ms', float('nan')):4.0f} ms)  "
        f"estimate error {err}  watchdog {last.get('watchdog', '?')}{gate}"
    )


def _start_of(rec: Recorder, end: dict) -> float:
    starts = [
        e["t"] for e in rec.events if e.get("event") == "attempt_start" and e["t"] <= end["t"]
    ]
    return starts[-1] if starts else float("-inf")


def summarize(rec: Recorder, job: GraspJob, wall_s: float) -> dict:
    ends = [e for e in rec.events if e.get("event") == "attempt_end"]
    attempts = []
    for end in ends:
        truths = [tr for tr in rec.truths if tr[0] <= end["t"]]
        success = bool(truths[-1][2]) if truths else False
        decisions = [
            e
            for e in rec.events
            if e.get("phase") == "decision" and e["t"] <= end["t"] and e["t"] >= _start_of(rec, end)
        ]
        attempts.append(
            {
                "decisions": [(round(d["p_success"], 3), d["verdict"]) for d in decisions],
                "seed": end["seed"],
                "phase": end["phase"],
                "success": success,
                "loop": end["loop"],
                "estimator": end["estimator"],
            }
        )
    errs = estimate_errors(rec.estimates, rec.truths)
    loops = [a["loop"] for a in attempts]
    ests = [a["estimator"] for a in attempts]
    return {
        "attempts": len(attempts),
        "successes": sum(a["success"] for a in attempts),
        "rate_hz": job.runtime.rate_hz,
        "mode": job.runtime.mode,
        "jitter_us_p50": max((loop["jitter_us_p50"] for loop in loops), default=float("nan")),
        "jitter_us_p99": max((loop["jitter_us_p99"] for loop in loops), default=float("nan")),
        "overruns": sum(loop["overruns"] for loop in loops),
        "ticks": sum(loop["ticks"] for loop in loops),
        "observations_applied": sum(e["applied"] for e in ests),
        "observations_dropped": sum(
            sum(v for k, v in e.items() if k.startswith("dropped")) for e in ests
        ),
        "observation_age_ms": float(np.nanmean([e["last_age_ms"] for e in ests])) if ests else None,
        "estimate_error_mm_median": float(np.median(errs[:, 0])) if len(errs) else None,
        "estimate_error_deg_median": float(np.median(errs[:, 1])) if len(errs) else None,
        "rejected_messages": rec.last.get("rejected", 0),
        "wall_s": wall_s,
        "per_attempt": attempts,
    }


def plot_estimate(rec: Recorder, path: Path) -> None:
    if not rec.estimates or not rec.truths:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = rec.truths[0][0]
    te = np.array([t for t, _ in rec.estimates]) - t0
    est = np.stack([e for _, e in rec.estimates])
    tt = np.array([t for t, *_ in rec.truths]) - t0
    true = np.stack([tr[1] for tr in rec.truths])
    names = ["x (m)", "y (m)", "z (m)", "yaw (deg)"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 8), sharex=True)
    for d, ax in enumerate(axes):
        ax.plot(tt, true[:, d], color="black", lw=1.2, label="truth (simulator)")
        ax.plot(te, est[:, d], color="tab:red", lw=1.0, label="latent estimate (runtime)")
        ax.set_ylabel(names[d])
        ax.grid(alpha=0.3)
    for e in rec.events:
        if e.get("event") == "phase" and e.get("phase") in ("descend", "close"):
            for ax in axes:
                ax.axvline(e["t"] - t0, color="gray", ls=":", lw=0.8)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (s); dotted: descend and close")
    fig.suptitle("The cube in the wrist-camera frame: the runtime's estimate against the truth")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_sim(job: GraspJob, out: Path, live: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    ports = free_ports(len(LINK_KEYS))
    addresses = {k: f"tcp://127.0.0.1:{p}" for k, p in zip(LINK_KEYS, ports)}
    job = job.model_copy(update={"link": job.link.model_copy(update=addresses)})
    config = out / "config.yaml"
    config.write_text(dump_config(job))
    ctx = link.Context()
    rec = Recorder(ctx, job, out)
    procs = {
        "sim world": _child(
            ["robot_runtime.sim_world", "--config", str(config)], out / "sim_world.log"
        ),
        "slow": _child(["robot_runtime.cli", "slow", "--config", str(config)], out / "slow.log"),
    }
    time.sleep(0.5)
    procs["runtime"] = _child(
        ["robot_runtime.service", "--config", str(config)], out / "runtime.log"
    )
    t0 = time.monotonic()
    last_print = 0.0
    interrupted = False
    try:
        while procs["runtime"].poll() is None:
            rec.poll()
            for name in ("sim world", "slow"):
                if procs[name].poll() is not None:
                    raise RuntimeError(
                        f"the {name} process stopped (see {out}/{name.replace(' ', '_')}.log)"
                    )
            now = time.monotonic()
            if live and now - last_print > 0.25:
                started = sum(1 for e in rec.events if e.get("event") == "attempt_start")
                print(
                    "\r" + status_line(rec, max(started, 1), job.sim.attempts)[:150].ljust(150),
                    end="",
                    flush=True,
                )
                last_print = now
            time.sleep(0.02)
    except KeyboardInterrupt:
        interrupted = True
        procs["runtime"].send_signal(2)
        procs["runtime"].wait(timeout=10)
    finally:
        if live:
            print()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        rec.poll()
    if procs["runtime"].returncode not in (0, None) and not interrupted:
        raise RuntimeError(f"the runtime process failed (see {out}/runtime.log)")
    summary = summarize(rec, job, time.monotonic() - t0)
    summary["interrupted"] = interrupted
    rec.close()
    ctx.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_estimate(rec, out / "estimate_vs_truth.png")
    return summary


def print_summary(summary: dict, out: Path) -> None:
    rows = [
        (
            "attempt",
            "seed",
            "outcome",
            "final phase",
            "gate: P(success)",
            "obs applied",
            "jitter p99 µs",
        )
    ]
    for i, a in enumerate(summary["per_attempt"], 1):
        gate = ", ".join(f"{p:.2f} {v}" for p, v in a["decisions"]) or "-"
        rows.append(
            (
                i,
                a["seed"],
                "success" if a["success"] else "failure",
                a["phase"],
                gate,
                a["estimator"]["applied"],
                f"{a['loop']['jitter_us_p99']:.0f}",
            )
        )
    print(format_table(rows))

    def fmt(v, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    s = summary
    print(
        f"{s['successes']}/{s['attempts']} grasps succeeded; loop {s['rate_hz']:g} Hz, jitter "
        f"p50/p99 {fmt(s['jitter_us_p50'], '.0f')}/{fmt(s['jitter_us_p99'], '.0f')} µs, "
        f"{summary['overruns']} overruns in {summary['ticks']} ticks; observations applied "
        f"{summary['observations_applied']}, dropped {summary['observations_dropped']}, age "
        f"{fmt(summary['observation_age_ms'], '.0f')} ms; estimate error (median) "
        f"{fmt(summary['estimate_error_mm_median'], '.1f')} mm, "
        f"{fmt(summary['estimate_error_deg_median'], '.1f')} deg"
    )
    print(f"run folder: {out} (telemetry.jsonl, summary.json, estimate_vs_truth.png)")
