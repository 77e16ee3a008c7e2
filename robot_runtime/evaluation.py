"""`kiwi eval latency`: does replaying the actions since the capture make late observations
useful? Oracle (an observation every tick, no delay) against stale (late observations applied as
if fresh) and compensated (applied at their capture tick, actions replayed), for latencies of
0-400 ms and observation rates of 5 and 10 Hz, on Pendulum (return of the Dreamer actor on the
latent) and on the simulated grasp (success rate and estimate error), all in lockstep.

Every condition runs the same episode seeds (paired), held out from training.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .lockstep import ORACLE, Condition, grasp_episode, pendulum_episode
from .textui import format_table

LATENCIES_MS = (0, 100, 200, 400)
RATES_HZ = (5, 10)
EVAL_SEED = 100_000  # far from every training seed


def conditions(tick_hz: float) -> list[tuple[Condition, float, float]]:
    """(condition, latency_ms, obs_hz): the oracle once, then stale/compensated per grid point."""
    out = [(Condition(ORACLE, 0, 1), 0.0, tick_hz)]
    for mode in ("stale", "compensated"):
        for latency in LATENCIES_MS:
            for rate in RATES_HZ:
                out.append(
                    (
                        Condition(
                            mode,
                            int(round(latency / 1000 * tick_hz)),
                            max(1, int(round(tick_hz / rate))),
                        ),
                        latency,
                        rate,
                    )
                )
    return out


def sweep(
    task: str,
    tick_hz: float,
    run_episode: Callable[[Condition, int], dict],
    episodes: int,
    metrics: tuple[str, ...],
    progress: bool,
) -> list[dict]:
    rows = []
    grid = conditions(tick_hz)
    bar = tqdm(
        total=len(grid) * episodes,
        desc=f"eval {task}",
        unit="episode",
        disable=not progress,
        dynamic_ncols=True,
    )
    for cond, latency, rate in grid:
        results = []
        for i in range(episodes):
            results.append(run_episode(cond, EVAL_SEED + i))
            bar.update(1)
        for metric in metrics:
            values = np.array([r[metric] for r in results], float)
            rows.append(
                {
                    "task": task,
                    "mode": cond.mode,
                    "latency_ms": latency,
                    "obs_hz": rate,
                    "metric": metric,
                    "value": float(np.nanmean(values)),
                    "std": float(np.nanstd(values)),
                    "episodes": episodes,
                }
            )
    bar.close()
    return rows


def pendulum_rows(agent_path: Path, episodes: int, progress: bool) -> list[dict]:
    from world_model.train import load_agent

    from .envs import make_env

    wm, behavior, _ = load_agent(agent_path)
    env = make_env("Pendulum-v1")
    run = lambda cond, seed: {"return": pendulum_episode(env, wm, behavior, cond, seed)}  # noqa: E731
    return sweep("pendulum", 20.0, run, episodes, ("return",), progress)


def grasp_rows(job, wm, episodes: int, progress: bool) -> list[dict]:
    """The arm re-aims from its latest estimate until it descends (``controller.aim=track``):
    what it acts on while moving is what latency compensation changes. No gate."""
    job = job.model_copy(
        update={
            "controller": job.controller.model_copy(update={"aim": "track"}),
            "gate": job.gate.model_copy(update={"enabled": False}),
        }
    )

    def run(cond, seed):
        r = grasp_episode(job, wm, cond, seed)
        return {"success_rate": float(r["success"]), "estimate_error_mm": r["estimate_error_mm"]}

    return sweep(
        "grasp", job.runtime.rate_hz, run, episodes, ("success_rate", "estimate_error_mm"), progress
    )


def verdicts(rows: list[dict]) -> list[str]:
    """The target: at 200 ms and 5 Hz, compensated within 10 % of oracle, stale clearly worse."""
    out = []
    for task, metric, higher_better in (
        ("pendulum", "return", True),
        ("grasp", "success_rate", True),
    ):
        pick = {
            r["mode"]: r["value"]
            for r in rows
            if r["task"] == task
            and r["metric"] == metric
            and (r["mode"] == ORACLE or (r["latency_ms"] == 200 and r["obs_hz"] == 5))
        }
        if len(pick) < 3:
            continue
        oracle, comp, stale = pick[ORACLE], pick["compensated"], pick["stale"]
        gap = abs(comp - oracle) / max(abs(oracle), 1e-9)
        within = gap <= 0.10 or (comp >= oracle if higher_better else comp <= oracle)
        stale_worse = stale < comp if higher_better else stale > comp
        out.append(
            f"{task} {metric} at 200 ms / 5 Hz: oracle {oracle:.3g}, compensated "
            f"{comp:.3g} ({'within' if within else 'NOT within'} 10 % of oracle: "
            f"{100 * gap:.1f} % off), stale {stale:.3g} "
            f"({'worse' if stale_worse else 'NOT worse'} than compensated)"
        )
    return out


def print_rows(rows: list[dict]) -> None:
    for task in dict.fromkeys(r["task"] for r in rows):
        metrics = list(dict.fromkeys(r["metric"] for r in rows if r["task"] == task))
        table = [("mode", "latency ms", "obs Hz", *metrics)]
        keyed: dict[tuple, dict] = {}
        for r in rows:
            if r["task"] == task:
                keyed.setdefault((r["mode"], r["latency_ms"], r["obs_hz"]), {})[r["metric"]] = r
        for (mode, latency, rate), vals in keyed.items():
            table.append(
                (
                    mode,
                    f"{latency:g}",
                    f"{rate:g}",
                    *[f"{vals[m]['value']:.3g} ± {vals[m]['std']:.2g}" for m in metrics],
                )
            )
        print(
            f"\n{task} ({table and next(iter(keyed.values()))[metrics[0]]['episodes']} "
            "episodes per row)"
        )
        print(format_table(table))


def plot_rows(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["task"], r["metric"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (task, metric) in zip(axes[0], panels):
        sel = [r for r in rows if r["task"] == task and r["metric"] == metric]
        oracle = [r["value"] for r in sel if r["mode"] == ORACLE]
        if oracle:
            ax.axhline(oracle[0], color="black", lw=1.2, label="oracle (every tick, no delay)")
        for mode, color in (("compensated", "tab:green"), ("stale", "tab:red")):
            for rate, style in zip(RATES_HZ, ("-", "--")):
                pts = sorted(
                    (r["latency_ms"], r["value"])
                    for r in sel
                    if r["mode"] == mode and r["obs_hz"] == rate
                )
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, style, marker="o", color=color, label=f"{mode}, {rate} Hz")
        ax.set_title(f"{task}: {metric}")
        ax.set_xlabel("observation latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(rows: list[dict], json_path: str | None, plot_path: Path) -> None:
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))
        print(f"wrote {json_path}")
    plot_rows(rows, plot_path)
    print(f"wrote {plot_path}")
