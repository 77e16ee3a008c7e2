"""What `kiwi sim` reports: per-attempt outcomes, summary.json and the table printed at the
end. Pure functions of what the Recorder (dryrun.py) kept; the plot is in sim_plot.py.

Outcomes. An attempt is scored by the simulator's truth once it is over: ``success`` when the
world says the cube is lifted and held at its end, whatever phase the controller was in.
Otherwise its final phase names it: ``failure`` (the grasp was played to the end and the cube is
not held), ``gave_up`` (the gate backed off too often), ``lost`` (no observation to act on), or
``timeout`` (no final phase within ``sim.episode_s``). An attempt the run cut short is
``interrupted`` (Ctrl-C, SIGTERM) or ``aborted`` (a child process died).

Errors. The latent's estimate, the slow perception's raw observations and the truth are all
moved to the world frame with the joints they were measured at (``world_pose``: forward
kinematics and ``camera_to_world``, as the controller does), so the cube does not jump when the
wrist turns and the errors of perception and latent are comparable. The latent is scored from
its attempt's first applied observation on (before it, it knows nothing of this cube); a raw
observation against the truth at its capture time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .config import GraspJob
from .textui import format_table

if TYPE_CHECKING:
    from .dryrun import Recorder, RunEnd

TIMED_OUT_MARGIN_S = 0.25  # an attempt this close to episode_s ran out of time, not stopped
OUTCOMES = ("success", "failure", "timeout", "lost", "gave_up", "interrupted", "aborted")
FINISHED = ("success", "failure", "timeout", "lost", "gave_up")  # decided, not cut short


class Estimate(NamedTuple):
    t: float
    object_cam: np.ndarray  # [4] camera frame: x, y, z (m), yaw (deg)
    joints: np.ndarray | None  # [6] measured at the same tick
    applied: int  # observations the estimator applied so far in this attempt


class Truth(NamedTuple):
    t: float
    object_cam: np.ndarray  # [4] camera frame, as Estimate
    success: bool
    episode: int
    joints: np.ndarray | None = None  # [6] the world's joints at the same step


class Observation(NamedTuple):
    t_capture: float
    object_cam: np.ndarray  # [4] as Estimate: what the slow perception saw
    joints: np.ndarray  # [6] at capture
    result: str  # what the estimator did with it
    t_received: float | None = None  # when the runtime read it (None: not reported)


def world_pose(object_cam: np.ndarray, joints_deg: np.ndarray | None) -> np.ndarray:
    """[x, y, z (m), yaw (deg, modulo 90)] of the cube in the world frame; the camera frame's
    own numbers when no joints are known."""
    from sim.kinematics import forward
    from sim.perception import camera_to_world

    obj = np.asarray(object_cam, float)
    if joints_deg is None:
        return obj[:4].copy()
    pose = forward(np.radians(np.asarray(joints_deg[:5], float)))
    pos, yaw = camera_to_world(obj, pose.camera_pos, pose.camera_rot)
    return np.array([*pos, math.degrees(yaw)])


def yaw_error_deg(a_deg: float, b_deg: float) -> float:
    """Yaw difference of a cube (the same every 90 degrees), 0..45."""
    from sim.perception import wrap_quarter_deg

    return abs(wrap_quarter_deg(a_deg - b_deg))


def nearest(times: np.ndarray, t: float) -> int:
    """Index of the time in sorted ``times`` closest to ``t``."""
    i = int(np.searchsorted(times, t))
    if i > 0 and (i == len(times) or t - times[i - 1] <= times[i] - t):
        return i - 1
    return i


Sample = tuple[float, np.ndarray, "np.ndarray | None"]  # (t, object_cam [4], joints [6])


def pose_errors(samples: Sequence[Sample], truths) -> np.ndarray:
    """[N, 2]: per (t, object_cam, joints) sample, position error (mm) and yaw error (deg)
    against the truth nearest in time, both in the world frame."""
    if not len(samples) or not len(truths):
        return np.zeros((0, 2))
    t_truth = np.array([tr[0] for tr in truths])
    out = []
    for t, obj, joints in samples:
        tr = truths[nearest(t_truth, t)]
        true_joints = tr[4] if len(tr) > 4 and tr[4] is not None else joints
        if joints is None or true_joints is None:  # no joints recorded: the camera frame
            est, true = np.asarray(obj, float), np.asarray(tr[1], float)
        else:
            est, true = world_pose(obj, joints), world_pose(tr[1], true_joints)
        out.append(
            (float(np.linalg.norm(est[:3] - true[:3]) * 1000), yaw_error_deg(est[3], true[3]))
        )
    return np.array(out)


def estimate_errors(estimates: Sequence, truths) -> np.ndarray:
    """The latent's errors (mm, deg) from each attempt's first applied observation on."""
    samples = [
        (e[0], e[1], e[2] if len(e) > 2 else None) for e in estimates if len(e) < 4 or e[3] > 0
    ]
    return pose_errors(samples, truths)


def perception_errors(observations: Sequence[Observation], truths) -> np.ndarray:
    """The raw observations' errors (mm, deg) against the truth at their capture time."""
    samples = [
        (o.t_capture, o.object_cam, o.joints)
        for o in observations
        if not str(o.result).startswith("dropped")
    ]
    return pose_errors(samples, truths)


def attempt_outcome(
    end: dict | None, t_start: float, success: bool, episode_s: float, stopped: str
) -> str:
    """One of OUTCOMES for an attempt (see the module's docstring); ``stopped`` (the run's
    outcome) for one cut short."""
    from .controllers import DONE, GAVE_UP, LOST

    if end is None:
        return stopped
    final = {DONE: "failure", GAVE_UP: "gave_up", LOST: "lost"}
    timed_out = end["t"] - t_start >= episode_s - TIMED_OUT_MARGIN_S
    if end["phase"] not in final and not timed_out:
        return stopped
    if success:
        return "success"
    return final.get(end["phase"], "timeout")


def _median(values: np.ndarray, column: int) -> float | None:
    return float(np.median(values[:, column])) if len(values) else None


def attempt_records(rec: Recorder, episode_s: float, stopped: str) -> list[dict]:
    """One record per attempt the runtime started, finished or not."""
    starts = [e for e in rec.events if e.get("event") == "attempt_start"]
    ends = [e for e in rec.events if e.get("event") == "attempt_end"]
    estimates = getattr(rec, "estimates", [])
    observations = getattr(rec, "observations", [])
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
        inside = [e for e in estimates if start["t"] <= e[0] <= t_last]
        seen = [o for o in observations if start["t"] <= o.t_capture <= t_last]
        est_err = estimate_errors(inside, rec.truths)
        obs_err = perception_errors(seen, rec.truths)
        out.append(
            {
                "decisions": [(round(d["p_success"], 3), d["verdict"]) for d in decisions],
                "seed": start["seed"],
                "t_start": start["t"],
                "t_end": t_last if end is not None else None,
                "phase": phase,
                "outcome": attempt_outcome(end, start["t"], success, episode_s, stopped),
                "success": success,
                "loop": end["loop"] if end is not None else None,
                "estimator": end["estimator"] if end is not None else None,
                "chunks": end.get("chunks") if end is not None else None,
                "estimate_error_mm_median": _median(est_err, 0),
                "estimate_error_deg_median": _median(est_err, 1),
                "perception_error_mm_median": _median(obs_err, 0),
                "perception_error_deg_median": _median(obs_err, 1),
            }
        )
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def summarize(rec: Recorder, job: GraspJob, wall_s: float, end: RunEnd) -> dict:
    stopped = end.outcome if end.outcome != "completed" else "aborted"  # the runtime stopped it
    attempts = attempt_records(rec, job.sim.episode_s, stopped)
    errs = estimate_errors(rec.estimates, rec.truths)
    obs_errs = perception_errors(getattr(rec, "observations", []), rec.truths)
    loops = [a["loop"] for a in attempts if a["loop"] is not None]
    ests = [a["estimator"] for a in attempts if a["estimator"] is not None]
    ages = [a for a in (e.get("last_age_ms") for e in ests) if _is_number(a)]  # None: no obs yet
    died = end.faults[0].as_dict() if end.faults else None
    if died is not None and died["process"] == "slow":
        died["watchdog_hold_after_s"] = end.watchdog_hold_after_s
    outcomes = {k: sum(a["outcome"] == k for a in attempts) for k in OUTCOMES}
    return {
        "outcome": end.outcome,
        "interrupted": end.outcome == "interrupted",
        "signal": end.signal,
        "died": died,
        "faults": [f.as_dict() for f in end.faults],
        "attempts": len(attempts),
        "attempts_finished": sum(outcomes[k] for k in FINISHED),
        "successes": outcomes["success"],
        "outcomes": outcomes,
        "seeds": [a["seed"] for a in attempts],
        "rate_hz": job.runtime.rate_hz,
        "mode": job.runtime.mode,
        "jitter_us_p50": max((loop["jitter_us_p50"] for loop in loops), default=float("nan")),
        "jitter_us_p99": max((loop["jitter_us_p99"] for loop in loops), default=float("nan")),
        "overruns": sum(loop["overruns"] for loop in loops),
        "ticks": sum(loop["ticks"] for loop in loops),
        "observations_applied": sum(e["applied"] for e in ests),  # per attempt, summed
        "observations_dropped": sum(
            sum(v for k, v in e.items() if k.startswith("dropped")) for e in ests
        ),
        "observations_recorded": len(getattr(rec, "observations", [])),
        "observation_age_ms": float(np.mean(ages)) if ages else None,
        "estimate_error_mm_median": _median(errs, 0),
        "estimate_error_deg_median": _median(errs, 1),
        "perception_error_mm_median": _median(obs_errs, 0),
        "perception_error_deg_median": _median(obs_errs, 1),
        "error_frame": "world",
        "rejected_messages": rec.last.get("rejected", 0),
        "world_rejected_commands": rec.world.get("rejected", 0),
        "wall_s": wall_s,
        "chunks": chunk_totals([a["chunks"] for a in attempts if a.get("chunks")]),
        "per_attempt": attempts,
    }


def chunk_totals(per_attempt: list[dict]) -> dict | None:
    """Action chunks over the run (`kiwi sim --vla`): received, taken over, refused by reason;
    None when no attempt followed chunks."""
    if not per_attempt:
        return None
    refused: dict[str, int] = {}
    for c in per_attempt:
        for reason, n in c.get("refused", {}).items():
            refused[reason] = refused.get(reason, 0) + n
    return {
        "received": sum(c.get("received", 0) for c in per_attempt),
        "taken": sum(c.get("taken", 0) for c in per_attempt),
        "refused": refused,
    }


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_summary(summary: dict, out: Path) -> None:
    header = ("#", "seed", "outcome", "phase", "gate P(success)", "obs",
              "latent mm/°", "raw mm/°", "p99 µs")  # fmt: skip
    rows = [header]
    for i, a in enumerate(summary["per_attempt"], 1):
        gate = " ".join(f"{p:.2f}{'✓' if v == 'commit' else '✗'}" for p, v in a["decisions"])
        latent = (f"{_fmt(a.get('estimate_error_mm_median'), '.0f')}/"
                  f"{_fmt(a.get('estimate_error_deg_median'), '.0f')}")  # fmt: skip
        raw = (f"{_fmt(a.get('perception_error_mm_median'), '.0f')}/"
               f"{_fmt(a.get('perception_error_deg_median'), '.0f')}")  # fmt: skip
        rows.append(
            (
                i,
                a["seed"],
                a["outcome"],
                a["phase"],
                gate or "-",
                a["estimator"]["applied"] if a["estimator"] else "-",
                latent,
                raw,
                f"{a['loop']['jitter_us_p99']:.0f}" if a["loop"] else "-",
            )
        )
    print(format_table(rows))
    print("gate: ✓ commit, ✗ back off; obs: observations applied; errors: medians, world frame")
    s = summary
    run = "" if s["outcome"] == "completed" else f" (run {s['outcome']})"
    counts = ", ".join(f"{k} {v}" for k, v in s.get("outcomes", {}).items() if v)
    counts = f" ({counts})" if counts else ""
    print(f"{s['successes']}/{s['attempts']} grasps succeeded{run}{counts}")
    print(
        f"loop {s['rate_hz']:g} Hz, jitter p50/p99 {_fmt(s['jitter_us_p50'], '.0f')}/"
        f"{_fmt(s['jitter_us_p99'], '.0f')} µs, {s['overruns']} overruns in {s['ticks']} ticks; "
        f"observations applied {s['observations_applied']}, dropped "
        f"{s['observations_dropped']}, age {_fmt(s['observation_age_ms'], '.0f')} ms"
    )
    print(
        f"cube error (median, world frame): latent {_fmt(s['estimate_error_mm_median'], '.1f')} "
        f"mm {_fmt(s['estimate_error_deg_median'], '.1f')} deg; raw perception "
        f"{_fmt(s.get('perception_error_mm_median'), '.1f')} mm "
        f"{_fmt(s.get('perception_error_deg_median'), '.1f')} deg"
    )
    chunks = s.get("chunks")
    if chunks:
        refused = ", ".join(f"{k} {v}" for k, v in chunks["refused"].items()) or "none"
        print(
            f"action chunks: {chunks['received']} received, {chunks['taken']} took over, "
            f"refused: {refused}"
        )
    print(f"run folder: {out} (telemetry.jsonl, summary.json, estimate_vs_truth.png)")
