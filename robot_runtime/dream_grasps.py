"""Dreamed grasp attempts as training data for the success head, and the learning curve that
says whether they help (issue 12, item 7: `kiwi eval grasp-curve`).

A dreamed attempt starts from a real belief ``lead`` frames before a recorded episode's close
(the posterior on the episode's own frames up to there), and rolls the prior through a varied
commit plan: the recorded actions from there with the arm's aim moved (an offset on every arm
joint, ramped in over the lead frames: shoulder pan and the elbow move the fingers sideways and
in reach, the wrist roll turns them against the cube's yaw) and the close moved earlier or later
by up to ``timing`` frames. The model's own prediction labels it: a grasp that holds leaves the
gripper stalled on the cube at the end of the episode (its measured position far from closed),
a miss, a push or a slip lets it close fully. That decoded end position, thresholded where it
best separates the real labelled attempts' dreams, gives each dreamed attempt the share of its
K dreams that hold as a soft label; the success head sees the dream's state ``horizon`` frames
after its close, as it sees a real decision's rollouts.

The learning curve fits the heads (robot_runtime/grasp_training.py's, unchanged) on 100, 300 and
1,000 real labelled grasps, and on 100 real plus the dreams from their starts; calibrates each on
its own real episodes only; and scores AUROC, Brier and ECE on a test dataset none of them saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from world_model.grasp import auroc, brier, fit_platt, reliability
from world_model.model import WorldModel
from world_model.rssm import State

from .grasp_training import Decisions, mean_logits, train_head

ARM_JOINTS = 5  # the action's first five columns: pan, lift, elbow, wrist flex, wrist roll
# Aim offsets in degrees, drawn uniformly in +-these per joint: pan and wrist roll (yaw) the
# most, lift and elbow (height and reach) less; wrist flex is left alone.
AIM_DEGREES = (5.0, 3.0, 3.0, 0.0, 25.0)


@dataclass
class Dreams:
    feat: torch.Tensor  # [M, K, F] the dream's state `horizon` frames after its close
    grip_end: torch.Tensor  # [M, K] decoded gripper position at the end of each dream
    offsets: np.ndarray  # [M, ARM_JOINTS] aim offsets, degrees
    shifts: np.ndarray  # [M] close moved by this many frames (+: later)
    starts: np.ndarray  # [M] position of the real episode each dream started from


def vary_plan(actions: np.ndarray, column: int, offset: np.ndarray, shift: int, lead: int):
    """The recorded actions ``[T, A]`` from the dream's start with the aim moved by ``offset``
    (degrees, ramped in over ``lead`` frames, then held) and the gripper column's commands
    moved ``shift`` frames later (earlier when negative; the ends repeat)."""
    plan = np.array(actions, np.float32, copy=True)
    ramp = np.minimum(1.0, (np.arange(len(plan)) + 1.0) / max(lead, 1))[:, None]
    plan[:, : len(offset)] += ramp * offset[None]
    src = np.clip(np.arange(len(plan)) - shift, 0, len(plan) - 1)
    plan[:, column] = actions[src, column]
    return plan


@torch.no_grad()
def beliefs_at(
    wm: WorldModel,
    episodes: list[dict[str, np.ndarray]],
    frames: list[int],
    gen: torch.Generator,
) -> State:
    """The posterior after each episode's frames ``0..frames[i]`` (every frame observed)."""
    parts = []
    for lo in range(0, len(episodes), 16):  # two cameras' frames: 16 episodes at a time
        eps, js = episodes[lo : lo + 16], frames[lo : lo + 16]
        context = min(js) + 1
        obs = {
            k: torch.as_tensor(np.stack([ep[k][j + 1 - context : j + 1] for ep, j in zip(eps, js)]))
            for k in wm.obs_keys
        }
        acts = torch.as_tensor(  # [B, context - 1, A]: the actions that led to frames 1..
            np.stack([ep["action"][j + 1 - context : j] for ep, j in zip(eps, js)]),
            dtype=torch.float32,
        )
        prev = torch.cat([torch.zeros(len(eps), 1, acts.shape[-1]), wm.normalize_action(acts)], 1)
        first = torch.zeros(len(eps), context, dtype=torch.bool)
        first[:, 0] = True
        states, _ = wm.observe({k: v.float() for k, v in obs.items()}, prev, first, generator=gen)
        parts.append(State(*(x[:, -1] for x in states)))
    return State(*(torch.cat(xs) for xs in zip(*parts)))


@torch.no_grad()
def dream_attempts(
    wm: WorldModel,
    episodes: list[dict[str, np.ndarray]],
    decide: Callable[[np.ndarray], int | None],
    column: int,
    plans: int,
    samples: int,
    horizon: int,
    seed: int,
    lead: int = 10,
    timing: int = 8,
    recorded: bool = False,
    progress: bool = False,
) -> Dreams:
    """``plans`` varied commit plans per episode (``recorded``: one, the recorded plan unvaried),
    each dreamed ``samples`` times from the belief ``lead`` frames before the episode's close
    to its last frame (the close moves by at most ``lead - 1`` frames earlier). Episodes without
    a close, or too short to dream ``timing + horizon`` frames past it, are skipped."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    chosen, starts, lengths = [], [], []
    for i, ep in enumerate(episodes):
        d = decide(ep["action"])
        if d is None or d < lead or d + timing + horizon >= len(ep["action"]):
            continue
        chosen.append(i)
        starts.append(d - lead)
        lengths.append(len(ep["action"]) - 1 - (d - lead))
    if not chosen:
        raise ValueError("no episode has a close with room to dream past it")
    beliefs = beliefs_at(wm, [episodes[i] for i in chosen], starts, gen)
    steps = min(lengths)  # every dream as long as the shortest episode allows
    feats, grips, offs, shifts, owners = [], [], [], [], []
    for n, (i, j) in enumerate(
        tqdm(
            list(zip(chosen, starts)),
            desc="dreams",
            disable=not progress,
            dynamic_ncols=True,
        )
    ):
        recorded_actions = episodes[i]["action"][j : j + steps]
        batch, these_shifts, these_offsets = [], [], []
        for _ in range(1 if recorded else plans):
            offset = (
                np.zeros(ARM_JOINTS)
                if recorded
                else rng.uniform(-1, 1, ARM_JOINTS) * np.array(AIM_DEGREES)
            )
            # never earlier than the dream's first frame: the dreamed close stays in the dream
            shift = 0 if recorded else int(rng.integers(-min(timing, lead - 1), timing + 1))
            batch.append(vary_plan(recorded_actions, column, offset, shift, lead))
            these_offsets.append(offset)
            these_shifts.append(shift)
        plan = wm.normalize_action(torch.as_tensor(np.stack(batch)))  # [P, T, A]
        p = len(batch)
        start = State(*(x[n : n + 1].repeat(p * samples, *[1] * (x.dim() - 1)) for x in beliefs))
        imagined, _ = wm.imagine(start, plan.repeat_interleave(samples, 0), generator=gen)
        feat = imagined.feat().reshape(p, samples, steps, -1)
        at = torch.as_tensor([lead + s - 1 + horizon for s in these_shifts])  # close + horizon
        feats.append(feat[torch.arange(p), :, at])
        end = State(*(x[:, -1] for x in imagined))
        grip = next(iter(wm.decode_vectors(end).values()))[:, column]
        grips.append(grip.reshape(p, samples))
        offs += these_offsets
        shifts += these_shifts
        owners += [i] * p
    return Dreams(
        torch.cat(feats),
        torch.cat(grips),
        np.array(offs),
        np.array(shifts),
        np.array(owners),
    )


def check_gripper_decodable(wm: WorldModel, column: int) -> None:
    """The labeller reads the gripper from the first vector key (observation.state), whose
    columns follow the action's: refuse a model where that cannot hold."""
    keys = list(wm.config.mlp_keys)
    if not keys or wm.spec.vector_dims[keys[0]] <= column:
        raise ValueError(
            "dreamed grasps are labelled from the decoded joint state: the model needs a "
            f"vector observation with the gripper at column {column} (it has {keys})"
        )


def fit_threshold(grip_end: np.ndarray, labels: np.ndarray) -> float:
    """The decoded-gripper threshold that best separates held from failed grasps (accuracy on
    the real labelled attempts' dreams, their mean over the K dreams)."""
    g = np.asarray(grip_end, float)
    candidates = np.unique(g)
    cuts = (candidates[:-1] + candidates[1:]) / 2 if len(candidates) > 1 else candidates
    acc = [np.mean((g > c) == (labels > 0.5)) for c in cuts]
    return float(cuts[int(np.argmax(acc))])


@dataclass
class LabelCheck:
    threshold: float
    accuracy: float  # the dream's verdict against the real outcome
    auroc: float  # the decoded end gripper as a score of the real outcome


def check_labeller(dreams: Dreams, labels: np.ndarray, threshold: float) -> LabelCheck:
    g = dreams.grip_end.numpy().mean(1)
    return LabelCheck(
        threshold, float(np.mean((g > threshold) == (labels > 0.5))), auroc(g, labels)
    )


def soft_labels(dreams: Dreams, threshold: float) -> torch.Tensor:
    """The share of each attempt's K dreams whose gripper stays open past ``threshold``."""
    return (dreams.grip_end > threshold).float().mean(1)


def subset(d: Decisions, idx) -> Decisions:
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    return Decisions(d.rollout_feat[idx], d.now_feat[idx], d.labels[idx])


def score_heads(
    fit: Decisions,
    cal: Decisions,
    test: Decisions,
    epochs: int,
    log: Callable[[str], None],
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """The rollout head fitted on ``fit`` (plus ``extra``: dreamed features ``[M, K, F]`` and
    their soft labels ``[M]``), calibrated on ``cal`` (real decisions only), scored on
    ``test``: AUROC, Brier, ECE."""
    feat, y = fit.rollout_feat, fit.labels
    if extra is not None:
        feat, y = torch.cat([feat, extra[0]]), torch.cat([y, extra[1]])
    head = train_head(feat, y, epochs, 0, log)
    calib = fit_platt(mean_logits(head, cal.rollout_feat), cal.labels.numpy())
    y_test = test.labels.numpy()
    p = calib(mean_logits(head, test.rollout_feat))
    ece, _ = reliability(p, y_test)
    return {"auroc": auroc(p, y_test), "brier": brier(p, y_test), "ece": ece}


def subsets(pool: int, size: int, repeats: int) -> list[list[int]]:
    """Up to ``repeats`` disjoint runs of ``size`` positions from ``0..pool-1``."""
    return [list(range(r * size, (r + 1) * size)) for r in range(min(repeats, pool // size))]


def split(ids: list[int], cal_fraction: float) -> tuple[list[int], list[int]]:
    """The last ``cal_fraction`` of a subset calibrates, the rest fits (as `kiwi train grasp`)."""
    n_cal = max(2, int(round(cal_fraction * len(ids))))
    return ids[:-n_cal], ids[-n_cal:]


def learning_curve(
    init: Path,
    data: Path,
    test: Path,
    out: Path,
    sizes: list[int],
    repeats: int,
    plans: int,
    test_samples: int,
    lead: int = 10,
    timing: int = 8,
    overrides: Sequence[str] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Heads on ``sizes`` real labelled grasps of ``data`` (up to ``repeats`` disjoint subsets
    each) and on the smallest size plus ``plans`` dreamed attempts per start, all scored on
    every decidable episode of ``test``. The settings (horizon, rollouts, epochs, calibration
    share) are the world model's job's ``gate`` with ``overrides`` laid over it. Returns the
    report."""
    from world_model.datasets.lerobot_format import DatasetError
    from world_model.datasets.lerobot_reader import LeRobotReader

    from .dataset_grasp import close_frame, decidable, decisions, gripper_column, labelled_episodes
    from .dataset_lab import job_of
    from .dataset_world_model import check_spec

    wm, meta, _ = WorldModel.load(init)
    wm.eval()
    job = job_of(meta, init, overrides)
    g = job.gate
    if Path(test).resolve() == Path(data).resolve():
        raise DatasetError("--test must be another dataset than --data (a fresh collection)")
    sets = {}
    wanted = max(s * repeats for s in sizes)  # every subset of every size, where there are
    for name, root, count in (("train", data, wanted), ("test", test, None)):
        with LeRobotReader(root) as reader:
            check_spec(wm.spec, reader)
            column = gripper_column(reader)
            check_gripper_decodable(wm, column)  # before decoding anything
            ids = list(range(reader.num_episodes))[:count]
            if name == "train" and len(ids) < min(sizes):  # before decoding anything
                raise DatasetError(
                    f"{root}: {len(ids)} episodes, fewer than the smallest size {min(sizes)}"
                )
            eps, _ = labelled_episodes(reader, job, ids, out / "cache" / name, progress, log)
        sets[name] = [eps[i] for i in decidable(eps, column, g.horizon)]
    train_eps, test_eps = sets["train"], sets["test"]
    if len(train_eps) < min(sizes):
        raise DatasetError(
            f"{data}: {len(train_eps)} decidable labelled grasps, fewer than the smallest size "
            f"{min(sizes)}"
        )
    sizes = sorted({s for s in sizes if s <= len(train_eps)})
    log(
        f"{len(train_eps)} decidable training grasps, {len(test_eps)} test grasps; sizes "
        f"{sizes}; {plans} dreamed plans per start"
    )
    real = decisions(wm, train_eps, column, job, 1, progress)
    test_dec = decisions(wm, test_eps, column, job, 3, progress, test_samples)
    decide = lambda action: close_frame(action, column)  # noqa: E731
    quiet = lambda _: None  # noqa: E731  (head training logs: one line per fit is enough)
    rows, checks = [], []
    for size in sizes:
        for r, ids in enumerate(subsets(len(train_eps), size, repeats)):
            fit_ids, cal_ids = split(ids, g.holdout_fraction)
            fit, cal = subset(real, fit_ids), subset(real, cal_ids)
            row = {"real": size, "dreamed": 0, "repeat": r}
            rows.append({**row, **score_heads(fit, cal, test_dec, g.epochs, quiet)})
            log(f"{size} real (subset {r}): {_fmt(rows[-1])}")
            if size != sizes[0]:
                continue
            # the labeller: the dreams of the recorded plans from the labelled starts
            fit_eps = [train_eps[i] for i in fit_ids]
            labels = real.labels[fit_ids].numpy()
            rec = dream_attempts(
                wm,
                fit_eps,
                decide,
                column,
                1,
                g.train_samples,
                g.horizon,
                10 + r,
                lead,
                timing,
                recorded=True,
            )
            threshold = fit_threshold(rec.grip_end.numpy().mean(1), labels)
            check = check_labeller(rec, labels, threshold)
            dreams = dream_attempts(
                wm,
                fit_eps,
                decide,
                column,
                plans,
                g.train_samples,
                g.horizon,
                20 + r,
                lead,
                timing,
                progress=progress,
            )
            soft = soft_labels(dreams, threshold)
            extra = (dreams.feat, soft)
            scored = score_heads(fit, cal, test_dec, g.epochs, quiet, extra)
            rows.append({"real": size, "dreamed": len(soft), "repeat": r, **scored})
            checks.append(
                {
                    "repeat": r,
                    "threshold": check.threshold,
                    "labeller_accuracy": check.accuracy,
                    "labeller_auroc": check.auroc,
                    "dreamed_success_rate": float(soft.mean()),
                    "real_success_rate": float(labels.mean()),
                }
            )
            log(
                f"{size} real + {len(soft)} dreamed (subset {r}): {_fmt(rows[-1])}; labeller "
                f"{check.accuracy:.0%} right on the real grasps (AUROC {check.auroc:.3f})"
            )
    summary = summarize(rows)
    return {
        "rows": rows,
        "labeller": checks,
        "summary": summary,
        "verdict": verdict(summary, sizes[0]),
        "test": {"dataset": str(test), "grasps": len(test_eps), "samples": test_samples},
        "train": {"dataset": str(data), "grasps": len(train_eps)},
        "world_model": str(init),
        "horizon": g.horizon,
        "train_samples": g.train_samples,
        "plans_per_start": plans,
        "aim_degrees": list(AIM_DEGREES),
        "timing_frames": timing,
        "lead_frames": lead,
    }


def _fmt(row: dict) -> str:
    return f"AUROC {row['auroc']:.3f}, Brier {row['brier']:.3f}, ECE {row['ece']:.3f}"


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over the repeats of each (real, dreamed>0) condition."""
    out = []
    keys = sorted({(r["real"], r["dreamed"] > 0) for r in rows})
    for size, dreamed in keys:
        these = [r for r in rows if r["real"] == size and (r["dreamed"] > 0) == dreamed]
        entry = {"real": size, "dreamed": dreamed, "repeats": len(these)}
        for m in ("auroc", "brier", "ece"):
            values = np.array([r[m] for r in these], float)
            entry[m], entry[m + "_sd"] = float(values.mean()), float(values.std())
        out.append(entry)
    return out


def verdict(summary: list[dict], smallest: int) -> str:
    base = next(s for s in summary if s["real"] == smallest and not s["dreamed"])
    dream = next((s for s in summary if s["real"] == smallest and s["dreamed"]), None)
    if dream is None:
        return "no dreamed condition"
    helps = dream["auroc"] > base["auroc"] and dream["ece"] <= base["ece"]
    return (
        f"dreams {'help' if helps else 'do not help'}: {smallest} real grasps AUROC "
        f"{base['auroc']:.3f}, ECE {base['ece']:.3f}; with dreams AUROC {dream['auroc']:.3f}, "
        f"ECE {dream['ece']:.3f}"
    )


def plot_curve(report: dict, path: Path) -> None:
    """AUROC and ECE against the number of real labelled grasps (log scale), each subset a
    dot, the mean a line; the dreamed condition beside its real size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from world_model.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, better in zip(axes, ("auroc", "ece"), ("higher", "lower")):
        for dreamed, colour, label in ((False, "C0", "real only"), (True, "C3", "+ dreamed")):
            rows = [r for r in report["rows"] if (r["dreamed"] > 0) == dreamed]
            means = [s for s in report["summary"] if s["dreamed"] == dreamed]
            if not rows:
                continue
            shift = 1.08 if dreamed else 1.0  # the dreamed points beside the real ones
            ax.scatter(
                [r["real"] * shift for r in rows],
                [r[metric] for r in rows],
                color=colour,
                s=14,
                alpha=0.5,
            )
            ax.errorbar(
                [s["real"] * shift for s in means],
                [s[metric] for s in means],
                yerr=[s[metric + "_sd"] for s in means],
                color=colour,
                marker="o",
                capsize=3,
                label=label + (f" ({rows[0]['dreamed']} dreams)" if dreamed else ""),
            )
        ax.set_xscale("log")
        ax.set_xlabel("real labelled grasps (fit + calibration)")
        ax.set_title(
            f"{metric.upper()} on {report['test']['grasps']} test grasps ({better} is better)"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].axhline(0.05, color="grey", ls="--", lw=1, label="ECE 0.05")
    axes[1].legend(fontsize=8)
    fig.suptitle(report["verdict"], fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
