"""`kiwi eval chunks`' table, verdicts against issue 13's targets, and plot."""

from __future__ import annotations

import math
from pathlib import Path

from .textui import format_table


def _cell(rows: list[dict], task: str, mode: str, delay: int, metric: str) -> dict | None:
    for r in rows:
        if (r["task"], r["mode"], r["delay_ms"], r["metric"]) == (task, mode, delay, metric):
            return r
    return None


def _fmt(r: dict | None, spec: str) -> str:
    if r is None or r["value"] is None or not math.isfinite(r["value"]):
        return "-"
    ci = r.get("ci95")
    text = format(r["value"], spec)
    return text if ci is None or not math.isfinite(ci) else f"{text} ± {format(ci, spec)}"


def print_table(rows: list[dict]) -> None:
    for task in dict.fromkeys(r["task"] for r in rows):
        table = [("mode", "delay ms", "success", "completion s", "jerk rms deg/s^3", "refused")]
        for mode in dict.fromkeys(r["mode"] for r in rows if r["task"] == task):
            for d in dict.fromkeys(r["delay_ms"] for r in rows if r["task"] == task):
                jerk = _cell(rows, task, mode, d, "jerk_rms")
                refused = sum((jerk or {}).get("refused", {}).values())
                table.append(
                    (
                        mode,
                        str(d),
                        _fmt(_cell(rows, task, mode, d, "success_rate"), ".2f"),
                        _fmt(_cell(rows, task, mode, d, "completion_s"), ".2f"),
                        _fmt(jerk, ".3g"),
                        str(refused),
                    )
                )
        n = next(r["episodes"] for r in rows if r["task"] == task)
        print(f"\n{task} ({n} episodes per row, the same seeds in every row)")
        print(format_table(table))


def verdicts(rows: list[dict]) -> list[str]:
    """Issue 13's targets, each as one line: measured against target."""
    out = []
    succ = {
        (r["task"], r["mode"], r["delay_ms"]): r["value"]
        for r in rows
        if r["metric"] == "success_rate" and r["value"] is not None
    }
    jerk = {
        (r["task"], r["mode"], r["delay_ms"]): r["value"]
        for r in rows
        if r["metric"] == "jerk_rms" and r["value"] is not None
    }
    n_of = {r["task"]: r["episodes"] for r in rows}
    zero, late = ("grasp_moving", "latent", 0), ("grasp_moving", "latent", 300)
    if zero in succ and late in succ:
        ok = succ[late] >= 0.9 * succ[zero]
        out.append(
            f"grasp_moving, latent at 300 ms: success {succ[late]:.2f} vs {succ[zero]:.2f} at "
            f"0 ms ({'within' if ok else 'NOT within'} 10 %)"
        )
    for task, mode, d in sorted(k for k in succ if k[1] == "blend" and k[2] > 0):
        base, latent = succ.get((task, "blend", 0)), succ.get((task, "latent", d))
        if base is None or latent is None or base - succ[(task, mode, d)] <= 0.20:
            continue
        gap = latent - succ[(task, mode, d)]
        out.append(
            f"{task} at {d} ms: blend fell {base - succ[(task, mode, d)]:.2f} from 0 ms; latent "
            f"{'+' if gap >= 0 else ''}{gap:.2f} over blend ({'meets' if gap >= 0.15 else 'MISSES'}"
            " >= +0.15)"
        )
    worse = [
        f"{t} {d} ms"
        for (t, m, d), v in jerk.items()
        if m == "latent" and (t, "blend", d) in jerk and not v < jerk[(t, "blend", d)]
    ]
    if any(k[1] == "latent" for k in jerk):
        out.append(
            "boundary jerk, latent below blend at every delay on both tasks: "
            + ("yes" if not worse else "NO (" + ", ".join(worse) + ")")
        )
    for task in dict.fromkeys(k[0] for k in succ):
        at0 = {m: v for (t, m, d), v in succ.items() if t == task and d == 0}
        n = n_of.get(task, 0)
        if len(at0) > 1 and n:
            p = sum(at0.values()) / len(at0)
            noise = 1.96 * math.sqrt(max(p * (1 - p), 1e-9) * 2 / n)
            spread = max(at0.values()) - min(at0.values())
            out.append(
                f"{task} at 0 ms: success {', '.join(f'{m} {v:.2f}' for m, v in at0.items())} "
                f"(spread {spread:.2f}, {'within' if spread <= noise else 'NOT within'} the "
                f"95 % noise of a difference, {noise:.2f}, at {n} episodes)"
            )
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Success against delay (top) and boundary jerk (bottom), a line per mode, a column per
    task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    colors = {"latest": "tab:red", "blend": "tab:orange", "latent": "tab:green"}
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False)
    for col, task in enumerate(tasks):
        for row, metric in enumerate(("success_rate", "jerk_rms")):
            ax = axes[row][col]
            for mode in dict.fromkeys(r["mode"] for r in rows):
                pts = sorted(
                    (r["delay_ms"], r["value"], r.get("ci95"))
                    for r in rows
                    if (r["task"], r["mode"], r["metric"]) == (task, mode, metric)
                    and r["value"] is not None
                    and math.isfinite(r["value"])
                )
                if not pts:
                    continue
                x, y, ci = zip(*pts)
                err = [c if c is not None and math.isfinite(c) else 0.0 for c in ci]
                nudge = {"latest": -8.0, "latent": 8.0}.get(mode, 0.0)  # overlapping lines
                ax.errorbar(
                    [v + nudge for v in x],
                    y,
                    yerr=err,
                    marker="o",
                    capsize=3,
                    color=colors.get(mode),
                    label=mode,
                )
            n = next((r["episodes"] for r in rows if r["task"] == task), 0)
            if metric == "success_rate":
                ax.set_title(f"{task}: success (n={n} per point, 95 % CI)")
                ax.set_ylim(-0.02, 1.02)
            else:
                ax.set_title(f"{task}: RMS jerk at chunk boundaries")
                ax.set_yscale("log")
                ax.set_ylabel("deg/s^3")
            ax.set_xlabel("policy delay (ms)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
