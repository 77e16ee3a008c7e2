"""`kiwi eval grasp`: how good is the forecast, and what does the gate buy?

Held-out episodes run in lockstep with the runtime's pieces. At every DECIDE the forecast is
made (K rollouts, and the no-rollout ablation on the same belief), then the simulator is saved,
the commit (close, lift, hold) is played out to see whether it *would* succeed, and the
simulator is restored; the gate then commits or backs off as it would on the robot. So every
decision has a forecast and a true outcome (for AUROC, Brier, ECE), the first decision of an
episode is what an ungated arm would have done, and the gated run is what the gate did.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from world_model.grasp import (
    Calibration,
    auroc,
    brier,
    ece_if_calibrated,
    load_grasp_predictor,
    reliability,
)

from .gate import commit_plan
from .lockstep import Condition, GraspLockstep
from .policies import build_policy
from .textui import format_table


@dataclass
class DecisionRecord:
    seed: int
    index: int  # 0: the first decision of the episode
    p_success: float
    p_no_rollout: float
    spread: float
    ms: float
    would_succeed: bool
    committed: bool


def would_succeed(run: GraspLockstep, aim, roll_hint: float, config) -> bool:
    """Plays the commit out from here on a saved simulator state, then puts everything back."""
    env = run.env
    saved = env.snapshot()
    xy, yaw = aim
    rate = run.job.runtime.rate_hz
    ticks = int(round((config.close_s + config.lift_s + config.hold_s) * rate))
    info = {}
    for target in commit_plan(xy, yaw, roll_hint, config, rate, ticks):
        _, _, _, _, info = env.step(target)
    outcome = bool(info.get("is_success", False))
    env.restore(saved)
    return outcome


def evaluate(
    job, path: Path, episodes: int, seed: int, threshold: float | None = None, progress: bool = True
) -> tuple[dict, list[DecisionRecord]]:

    wm, predictor, head_now, calibration_now = load_grasp_predictor(path, job.gate.samples)
    threshold = job.gate.threshold if threshold is None else threshold
    return run_decisions(
        job, wm, predictor, head_now, calibration_now, episodes, seed, threshold, progress
    )


def runtime_condition(job) -> Condition:
    """Observations as the slow process delivers them (rate and latency of the config)."""
    every = max(1, int(round(job.runtime.rate_hz / job.slow.rate_hz)))
    delay = int(round(job.slow.latency_ms / 1000 * job.runtime.rate_hz))
    return Condition("compensated", delay, every)


def run_decisions(
    job,
    wm,
    predictor,
    head_now,
    calibration_now,
    episodes: int,
    seed: int,
    threshold: float,
    progress: bool = True,
    desc: str = "eval grasp",
) -> tuple[dict, list[DecisionRecord]]:
    """Closed-loop grasps on seeds ``seed ..``; every decision forecast and played out."""
    condition = runtime_condition(job)
    records: list[DecisionRecord] = []
    outcomes = []
    for i in tqdm(
        range(episodes), desc=desc, unit="episode", disable=not progress, dynamic_ncols=True
    ):
        episode: list[DecisionRecord] = []
        cell: list[GraspLockstep] = []  # the run, once built (decisions come after)

        def record(d, belief, episode=episode, cell=cell, seed=seed + i) -> None:
            with torch.no_grad():
                logit = float(head_now(belief.feat())[0])
            episode.append(
                DecisionRecord(
                    seed,
                    len(episode),
                    d.p_success,
                    float((calibration_now or Calibration())(logit)),
                    d.spread,
                    d.ms,
                    would_succeed(cell[0], d.aim, d.roll_hint, job.controller),
                    d.verdict == "commit",
                )
            )

        built = build_policy(
            job,
            "grasp",
            background=False,
            threshold=threshold,
            predictor=predictor,
            on_decision=record,
        )
        run = GraspLockstep(job, wm, condition, seed + i, built.policy)
        cell.append(run)
        result = run.run()
        records += episode
        outcomes.append(
            {
                "seed": seed + i,
                "success": result["success"],
                "phase": result["phase"],
                "decisions": len(episode),
            }
        )
    return summarize(records, outcomes, predictor, threshold, condition), records


def summarize(
    records: list[DecisionRecord],
    outcomes: list[dict],
    predictor,
    threshold: float,
    condition: Condition,
) -> dict:
    p = np.array([r.p_success for r in records])
    p_now = np.array([r.p_no_rollout for r in records])
    y = np.array([r.would_succeed for r in records])
    first = [r for r in records if r.index == 0]
    committed = [o for o in outcomes if o["phase"] != "gave_up" and o["decisions"] > 0]
    good = y.sum()
    skipped_good = sum(1 for r in records if r.would_succeed and not r.committed)
    ece, table = reliability(p, y)
    lat = np.array([r.ms for r in records])
    return {
        "auroc": auroc(p, y),
        "brier": brier(p, y),
        "ece": ece,
        "ece_if_calibrated": ece_if_calibrated(p) if len(p) else None,
        "reliability": table,
        "auroc_no_rollout": auroc(p_now, y),
        "brier_no_rollout": brier(p_now, y),
        "ece_no_rollout": reliability(p_now, y)[0],
        "success_rate_ungated": float(np.mean([r.would_succeed for r in first])) if first else None,
        "success_rate_gated": (
            float(np.mean([o["success"] for o in committed])) if committed else None
        ),
        "skipped_good_fraction": float(skipped_good / good) if good else None,
        "gave_up": sum(1 for o in outcomes if o["phase"] == "gave_up"),
        "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
        "latency_ms_p95": float(np.percentile(lat, 95)) if len(lat) else None,
        "samples": predictor.samples,
        "horizon": predictor.horizon,
        "threshold": threshold,
        "episodes": len(outcomes),
        "decisions": len(records),
        "would_succeed_rate": float(y.mean()) if len(y) else None,
        "observations": {
            "every_ticks": condition.every_ticks,
            "delay_ticks": condition.delay_ticks,
        },
    }


def plot_reliability(summary: dict, records: list[DecisionRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    ax = axes[0]
    ax.plot([0, 1], [0, 1], color="gray", ls=":", label="perfect calibration")
    for key, label, color in (
        ("p_success", "rollout (K x H)", "tab:blue"),
        ("p_no_rollout", "no rollout (ablation)", "tab:orange"),
    ):
        p = np.array([getattr(r, key) for r in records])
        y = np.array([r.would_succeed for r in records])
        _, table = reliability(p, y)
        if table:
            conf, freq, counts = zip(*table)
            ax.plot(conf, freq, "o-", color=color, label=label)
            if key == "p_success":
                for c, f, n in table:
                    ax.annotate(
                        str(n),
                        (c, f),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=7,
                        color=color,
                    )
    ax.set_xlabel("forecast P(success)")
    ax.set_ylabel("observed success frequency")
    ax.set_title(f"reliability (ECE {summary['ece']:.3f}; numbers: decisions per bin)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    p = np.array([r.p_success for r in records])
    y = np.array([r.would_succeed for r in records])
    bins = np.linspace(0, 1, 21)
    ax.hist(p[y], bins, alpha=0.6, color="tab:green", label="would succeed")
    ax.hist(p[~y], bins, alpha=0.6, color="tab:red", label="would fail")
    ax.axvline(summary["threshold"], color="black", ls="--", label="commit threshold")
    ax.set_xlabel("forecast P(success)")
    ax.set_title(f"AUROC {summary['auroc']:.3f} (no rollout {summary['auroc_no_rollout']:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def noise_floor(pair) -> str:
    """``ece_if_calibrated`` as ``0.051 / 0.075`` ("-" when absent)."""
    if not pair or any(v is None or v != v for v in pair):
        return "-"
    return f"{pair[0]:.3f} / {pair[1]:.3f}"


def print_summary(s: dict) -> None:
    fmt = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731
    print(
        format_table(
            [
                ("figure", "value", "target"),
                ("AUROC", fmt(s["auroc"]), ">= 0.9"),
                ("AUROC, no rollout (ablation)", fmt(s["auroc_no_rollout"]), ""),
                ("Brier", fmt(s["brier"]), ""),
                ("ECE", fmt(s["ece"]), "<= 0.05"),
                (
                    "ECE a calibrated forecast gets by chance",
                    noise_floor(s.get("ece_if_calibrated")),
                    "(median / 95th pct)",
                ),
                ("success rate, ungated", fmt(s["success_rate_ungated"], ".1%"), ""),
                (
                    "success rate of committed grasps, gated",
                    fmt(s["success_rate_gated"], ".1%"),
                    ">= ungated + 25 points",
                ),
                (
                    "would-be successes the gate skipped",
                    fmt(s["skipped_good_fraction"], ".1%"),
                    "<= 20%",
                ),
                (
                    f"forecast latency p95 (K={s['samples']}, H={s['horizon']}) ms",
                    fmt(s["latency_ms_p95"], ".1f"),
                    "<= 20",
                ),
            ]
        )
    )
    print(
        f"{s['episodes']} held-out episodes, {s['decisions']} decisions, {s['gave_up']} gave "
        f"up; threshold {s['threshold']}"
    )


def write(
    summary: dict, records: list[DecisionRecord], json_path: str | None, plot_path: Path
) -> None:
    plot_reliability(summary, records, plot_path)
    print(f"wrote {plot_path}")
    if json_path:
        Path(json_path).write_text(
            json.dumps({**summary, "decisions_detail": [asdict(r) for r in records]}, indent=1)
        )
        print(f"wrote {json_path}")
