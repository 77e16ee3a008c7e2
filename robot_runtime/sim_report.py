"""What `kiwi sim` reports: per-attempt outcomes, summary.json, the estimate-vs-truth plot and
the table printed at the end. Pure functions of what the Recorder (dryrun.py) kept."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import GraspJob
from .textui import format_table

if TYPE_CHECKING:
    from .dryrun import Recorder, RunEnd

TIMED_OUT_MARGIN_S = 0.25  # an attempt this close to episode_s ran out of time, not stopped


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


def attempt_outcome(
    end: dict | None, t_start: float, success: bool, episode_s: float, stopped: str
) -> str:
    """``success``/``failure`` for an attempt that finished (its controller reached a final
    phase, or it ran out of time); ``stopped`` (the run's outcome) for one cut short."""
    from .controllers import DONE, GAVE_UP, LOST

    if end is not None and (
        end["phase"] in (DONE, GAVE_UP, LOST)
        or end["t"] - t_start >= episode_s - TIMED_OUT_MARGIN_S
    ):
        return "success" if success else "failure"
    return stopped


def attempt_records(rec: Recorder, episode_s: float, stopped: str) -> list[dict]:
    """One record per attempt the runtime started, finished or not."""
    starts = [e for e in rec.events if e.get("event") == "attempt_start"]
    ends = [e for e in rec.events if e.get("event") == "attempt_end"]
    out = []
    for i, start in enumerate(starts):
        t_next = starts[i + 1]["t"] if i + 1 < len(starts) else math.inf
        end = next((e for e in ends if start["t"] <= e["t"] < t_next), None)
        t_last = end["t"] if end is not None else t_next
        truths = [tr for tr in rec.truths if tr[0] <= t_last]
        success = bool(truths[-1][2]) if truths else False
        decisions = [
            e for e in rec.events if e.get("phase") == "decision" and start["t"] <= e["t"] <= t_last
        ]
        phase = end["phase"] if end is not None else rec.last.get("phase", "?")
        out.append(
            {
                "decisions": [(round(d["p_success"], 3), d["verdict"]) for d in decisions],
                "seed": start["seed"],
                "phase": phase,
                "outcome": attempt_outcome(end, start["t"], success, episode_s, stopped),
                "success": success,
                "loop": end["loop"] if end is not None else None,
                "estimator": end["estimator"] if end is not None else None,
            }
        )
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def summarize(rec: Recorder, job: GraspJob, wall_s: float, end: RunEnd) -> dict:
    stopped = end.outcome if end.outcome != "completed" else "stopped"
    attempts = attempt_records(rec, job.sim.episode_s, stopped)
    errs = estimate_errors(rec.estimates, rec.truths)
    loops = [a["loop"] for a in attempts if a["loop"] is not None]
    ests = [a["estimator"] for a in attempts if a["estimator"] is not None]
    ages = [a for a in (e.get("last_age_ms") for e in ests) if _is_number(a)]  # None: no obs yet
    died = end.faults[0].as_dict() if end.faults else None
    if died is not None and died["process"] == "slow":
        died["watchdog_hold_after_s"] = end.watchdog_hold_after_s
    return {
        "outcome": end.outcome,
        "interrupted": end.outcome == "interrupted",
        "signal": end.signal,
        "died": died,
        "faults": [f.as_dict() for f in end.faults],
        "attempts": len(attempts),
        "attempts_finished": sum(a["outcome"] in ("success", "failure") for a in attempts),
        "successes": sum(a["outcome"] == "success" for a in attempts),
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
        "observation_age_ms": float(np.mean(ages)) if ages else None,
        "estimate_error_mm_median": float(np.median(errs[:, 0])) if len(errs) else None,
        "estimate_error_deg_median": float(np.median(errs[:, 1])) if len(errs) else None,
        "rejected_messages": rec.last.get("rejected", 0),
        "world_rejected_commands": rec.world.get("rejected", 0),
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
                a["outcome"],
                a["phase"],
                gate,
                a["estimator"]["applied"] if a["estimator"] else "-",
                f"{a['loop']['jitter_us_p99']:.0f}" if a["loop"] else "-",
            )
        )
    print(format_table(rows))

    def fmt(v, spec: str) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    s = summary
    run = "" if s["outcome"] == "completed" else f" (run {s['outcome']})"
    print(
        f"{s['successes']}/{s['attempts_finished']} grasps succeeded{run}; "
        f"loop {s['rate_hz']:g} Hz, jitter "
        f"p50/p99 {fmt(s['jitter_us_p50'], '.0f')}/{fmt(s['jitter_us_p99'], '.0f')} µs, "
        f"{summary['overruns']} overruns in {summary['ticks']} ticks; observations applied "
        f"{summary['observations_applied']}, dropped {summary['observations_dropped']}, age "
        f"{fmt(summary['observation_age_ms'], '.0f')} ms; estimate error (median) "
        f"{fmt(summary['estimate_error_mm_median'], '.1f')} mm, "
        f"{fmt(summary['estimate_error_deg_median'], '.1f')} deg"
    )
    print(f"run folder: {out} (telemetry.jsonl, summary.json, estimate_vs_truth.png)")
