"""`kiwi sim`'s estimate_vs_truth.png: the cube as the latent believed it, as the slow perception
saw it and as it was, in the wrist-camera frame (above: what the model predicts) and in the world
frame (below: where the cube does not jump when the wrist turns). Attempt boundaries carry their
seed and outcome, gate decisions their P(success); observation arrivals are ticks along the
bottom."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .sim_report import world_pose

if TYPE_CHECKING:
    from .dryrun import Recorder

NAMES = ("x (m)", "y (m)", "z (m)", "yaw (deg)")
GAP_S = 0.5  # a longer gap between samples breaks the line (a reset between attempts)
WIDTH_IN_PER_S = 0.12  # a 200 s run is 24 inches wide: attempts and their labels stay apart
OUTCOME_COLORS = {"success": "tab:green", "failure": "tab:red", "timeout": "tab:orange",
                  "lost": "tab:purple", "gave_up": "tab:brown"}  # fmt: skip


def _broken(t: np.ndarray, y: np.ndarray, wraps: bool) -> tuple[np.ndarray, np.ndarray]:
    """NaN inserted where samples are further apart than GAP_S (no line across a reset) and,
    for a yaw (``wraps``), where it wraps from +45 to -45 degrees (the same cube)."""
    if len(t) < 2:
        return t, y
    jump = np.diff(t) > GAP_S
    if wraps:
        jump |= np.abs(np.diff(y)) > 45.0
    cut = np.flatnonzero(jump) + 1
    return np.insert(t, cut, np.nan), np.insert(y, cut, np.nan)


def _series(samples, frame: str) -> np.ndarray:
    """[N, 4] poses of (t, object_cam, joints, ...) samples in the camera or world frame."""
    if frame == "camera" or not samples:
        return np.array([np.asarray(s[1], float)[:4] for s in samples]).reshape(-1, 4)
    return np.array([world_pose(s[1], s[2]) for s in samples]).reshape(-1, 4)


def plot_estimate(rec: Recorder, path: Path, attempts: list[dict] | None = None) -> None:
    if not rec.truths:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = rec.truths[0][0]
    truths = rec.truths[::2]  # 25 Hz is plenty for a line
    tt = np.array([tr[0] for tr in truths]) - t0
    true_samples = [(tr[0], tr[1], tr[4] if len(tr) > 4 else None) for tr in truths]
    ests = [e for e in rec.estimates if len(e) < 4 or e[3] > 0]  # once the attempt has seen one
    te = np.array([e[0] for e in ests]) - t0
    est_samples = [(e[0], e[1], e[2] if len(e) > 2 else None) for e in ests]
    obs = [o for o in getattr(rec, "observations", []) if not str(o.result).startswith("dropped")]
    to = np.array([o.t_capture for o in obs]) - t0
    arrived = np.array([o.t_received or o.t_capture for o in obs]) - t0
    obs_samples = [(o.t_capture, o.object_cam, o.joints) for o in obs]

    span_s = float(max(tt[-1], te[-1] if len(te) else 0.0))
    width_in = float(np.clip(span_s * WIDTH_IN_PER_S, 11.0, 40.0))  # ~1 inch per second of grasp
    fig, axes = plt.subplots(8, 1, figsize=(width_in, 15), sharex=True)
    panels = axes.reshape(2, 4)  # [frame, x/y/z/yaw]
    for row, frame in enumerate(("camera", "world")):
        true, est, raw = (_series(s, frame) for s in (true_samples, est_samples, obs_samples))
        for d in range(4):
            ax = panels[row, d]
            ax.plot(
                *_broken(tt, true[:, d], d == 3), color="black", lw=1.3, label="truth (simulator)"
            )
            if len(te):
                ax.plot(*_broken(te, est[:, d], d == 3), color="tab:red", lw=1.0,
                        label="latent estimate (runtime)")  # fmt: skip
            if len(to):
                ax.plot(to, raw[:, d], ".", color="tab:blue", ms=3, alpha=0.7,
                        label="raw perception (at capture)")  # fmt: skip
            ax.set_ylabel(f"{frame}\n{NAMES[d]}")
            ax.grid(alpha=0.3)
            if frame == "world" and d == 2:
                ax.set_ylim(-0.02, 0.15)
            if d == 3:
                ax.set_ylim(-50, 50)
    _mark_attempts(axes, attempts or [], t0)
    _mark_decisions(panels[:, 3], rec.events, t0)
    for ax in panels[:, 3]:
        if len(arrived):
            ax.plot(arrived, np.full(len(arrived), -48.0), "|", color="tab:blue", ms=8, alpha=0.6)
    axes[-1].set_xlabel(
        "time (s)    |: observations arriving at the runtime    dashed: gate decisions, "
        "green commit / orange back off, with P(success)"
    )
    panels[0, 0].set_title("wrist-camera frame (what the latent predicts)", fontsize=10, loc="left")
    panels[1, 0].set_title("world frame (joints at each sample: the cube does not move when "
                           "the wrist turns)", fontsize=10, loc="left")  # fmt: skip
    handles, labels = panels[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=3, fontsize=9)
    fig.suptitle("The cube: the runtime's estimate, the raw perception and the truth", x=0.02,
                 y=0.995, ha="left")  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mark_attempts(axes, attempts: list[dict], t0: float) -> None:
    for a in attempts:
        color = OUTCOME_COLORS.get(a["outcome"], "gray")
        for ax in axes.flat:
            ax.axvline(a["t_start"] - t0, color="gray", lw=0.8)
            if a.get("t_end") is not None:
                ax.axvspan(a["t_start"] - t0, a["t_end"] - t0, color=color, alpha=0.06)
        for ax in (axes[0], axes[4]):
            ax.annotate(f"seed {a['seed']}\n{a['outcome']}", (a["t_start"] - t0, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", va="top", fontsize=8, color=color,
                        fontweight="bold")  # fmt: skip


def _mark_decisions(label_axes, events: list[dict], t0: float) -> None:
    decisions = [e for e in events if e.get("phase") == "decision" and "p_success" in e]
    axes = label_axes[0].figure.axes
    for i, e in enumerate(decisions):
        color = "tab:green" if e.get("verdict") == "commit" else "tab:orange"
        for ax in axes:
            ax.axvline(e["t"] - t0, color=color, ls="--", lw=0.8)
        for ax in label_axes:  # staggered: back-offs and the commit of one attempt lie close
            ax.annotate(f"P={e['p_success']:.2f}", (e["t"] - t0, 1.0 - 0.1 * (i % 3)),
                        xycoords=("data", "axes fraction"), xytext=(2, -2),
                        textcoords="offset points", va="top", fontsize=7, color=color)  # fmt: skip
