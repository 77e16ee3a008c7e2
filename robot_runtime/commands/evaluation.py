"""kiwi eval: the headline evaluations, as tables, plots and JSON."""

from __future__ import annotations

from pathlib import Path

from . import Formatter, add_config_args, command


def cmd_eval_latency(args) -> int:
    import torch

    from ..assets import resolve
    from ..config import GraspJob, load_config
    from ..evaluation import grasp_rows, pendulum_rows, print_rows, verdicts, write_outputs
    from ..service import load_world_model

    torch.set_num_threads(1)
    tasks = [t for t in args.tasks.split(",") if t]
    episodes = 2 if args.quick else args.episodes
    grasp_episodes = 2 if args.quick else args.grasp_episodes
    rows = []
    if "pendulum" in tasks:
        rows += pendulum_rows(resolve(args.agent), episodes, not args.no_progress)
    if "grasp" in tasks:
        job, _ = load_config(args.config, GraspJob, args.overrides)
        if args.quick:
            job = job.model_copy(update={"sim": job.sim.model_copy(update={"episode_s": 1.0})})
        rows += grasp_rows(
            job, load_world_model(job.runtime.checkpoint), grasp_episodes, not args.no_progress
        )
    print_rows(rows)
    print()
    for line in verdicts(rows):
        print(line)
    write_outputs(rows, args.json, Path(args.plot))
    return 0


def cmd_eval_grasp(args) -> int:
    import torch

    if args.data:
        return eval_grasp_on_lerobot(args)

    from ..assets import resolve
    from ..config import GraspJob, load_config
    from ..grasp_eval import evaluate, print_summary, write

    torch.set_num_threads(1)
    overrides = list(args.overrides)
    if args.samples:
        overrides.append(f"gate.samples={args.samples}")
    job, _ = load_config(args.config, GraspJob, overrides)
    path = resolve(args.checkpoint or job.runtime.checkpoint)
    episodes = 3 if args.quick else args.episodes
    print(f"kiwi eval grasp: {episodes} held-out episodes (seeds {args.seed}..) with {path.name}")
    summary, records = evaluate(
        job, path, episodes, args.seed, args.threshold, not args.no_progress
    )
    print_summary(summary)
    if not records:
        print(
            "no grasp reached a decision (the model never found the cube well enough to aim): "
            "nothing to score or plot"
        )
        return 1
    write(summary, records, args.json, Path(args.plot))
    return 0


def eval_grasp_on_lerobot(args) -> int:
    """`kiwi eval grasp --data DIR`: the forecast at every labelled episode's decision."""
    import tempfile

    import torch

    from world_model.errors import KiwiError

    from ..assets import resolve
    from ..dataset_grasp import evaluate_grasp_on_dataset
    from ..grasp_eval import write

    torch.set_num_threads(1)
    if not args.checkpoint:
        raise KiwiError("--data needs --checkpoint: a model from `kiwi train grasp --data`")
    path = resolve(args.checkpoint)
    episodes = 3 if args.quick else args.dataset_episodes
    with tempfile.TemporaryDirectory(prefix="kiwi-eval-grasp-") as cache:  # decoded frames
        summary, records = evaluate_grasp_on_dataset(
            path, Path(args.data), Path(cache), episodes, not args.no_progress
        )
    print(
        f"AUROC {summary['auroc']:.3f} (no rollout {summary['auroc_no_rollout']:.3f}), Brier "
        f"{summary['brier']:.3f}, ECE {summary['ece']:.3f} on {summary['episodes']} episodes "
        f"({summary['which_episodes']}; success rate {summary['success_rate']:.0%})"
    )
    write(summary, records, args.json, Path(args.plot))
    return 0


def cmd_eval_world_model(args) -> int:
    import torch

    from world_model.errors import OutputError

    from ..dataset_lab import OUTPUTS, evaluate_dataset

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    there = [name for name in OUTPUTS if (out / name).exists()]
    if there and not args.overwrite:
        raise OutputError(
            f"{out} already holds {', '.join(there)}; use --overwrite or another --out"
        )
    print(f"kiwi eval world-model: {args.checkpoint} on the held-out episodes of {args.data}")
    report = evaluate_dataset(
        Path(args.checkpoint), Path(args.data), out, args.episodes, not args.no_progress
    )
    from ..textui import format_table

    rows = [("horizon", "state nMSE (model)", "state nMSE (persistence)")]
    rows += [
        (h, f"{v:.4g}", f"{report['nmse_persistence'][h]:.4g}")
        for h, v in report["nmse_open_loop"].items()
    ]
    print(format_table(rows))
    for cam, curve in report["image_mse_open_loop"].items():
        persist = report["image_mse_persistence"][cam]
        print(
            f"{cam} pixel MSE by horizon: "
            + ", ".join(f"{h}: {v:.4f} (persistence {persist[h]:.4f})" for h, v in curve.items())
        )
    div = report["imagination"]["diverges_at_step"]
    print(f"the plotted dream diverges at step {div if div else '> horizon'}")
    print(f"wrote {out}/recon.png, imagination.png, horizon.png, report.json")
    return 0


def register(sub) -> None:
    ev = sub.add_parser("eval", help="the headline evaluations", formatter_class=Formatter)
    ev_sub = ev.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = command(
        ev_sub,
        "latency",
        cmd_eval_latency,
        "oracle vs stale vs latency-compensated corrections, Pendulum and grasp",
        "In lockstep (virtual time; latency counted in ticks), the runtime's estimator "
        "and controllers with observations every tick and on time (oracle), late and "
        "applied as if fresh (stale), or late and applied at their capture tick with the "
        "actions since replayed (compensated); latencies 0, 100, 200, 400 ms and "
        "observation rates 5 and 10 Hz. Pendulum: the return of the Dreamer actor on the "
        "latent; grasp: success rate and the estimate's error. Prints tables, saves a "
        "plot and writes JSON rows {task, mode, latency_ms, obs_hz, metric, value}.",
        "kiwi eval latency --json eval-latency.json\n"
        "kiwi eval latency --tasks pendulum --episodes 50",
    )
    p.add_argument("--tasks", default="pendulum,grasp", help="comma separated: pendulum, grasp")
    p.add_argument("--episodes", type=int, default=20, help="Pendulum episodes per condition")
    p.add_argument("--grasp-episodes", type=int, default=40, help="grasp episodes per condition")
    p.add_argument(
        "--agent",
        default="shipped:pendulum_agent.safetensors",
        help="Pendulum agent (from `kiwi train agent`)",
    )
    add_config_args(p, "sim_grasp", presets=False)
    p.add_argument("--json", nargs="?", const="eval-latency.json", metavar="FILE")
    p.add_argument("--plot", default="eval-latency.png", help="where the plot goes")
    p.add_argument("--quick", action="store_true", help="2 short episodes per condition (smoke)")
    p.add_argument("--no-progress", action="store_true")

    from ..config import GRASP_EVAL_SEED as EVAL_SEED

    p = command(
        ev_sub,
        "grasp",
        cmd_eval_grasp,
        "the grasp-success forecast and the commit gate, on held-out seeds",
        "Runs held-out grasp episodes in lockstep. At every DECIDE it forecasts the grasp "
        "(K prior rollouts of the commit plan, and a no-rollout classifier on the same "
        "belief), plays the commit out on a saved copy of the simulator to get the true "
        "outcome, restores it, and lets the gate commit or back off. Reports AUROC, Brier, "
        "ECE (reliability diagram PNG), success of committed grasps with and without "
        "the gate, the share of would-be successes the gate skipped, and forecast latency.",
        "kiwi eval grasp --episodes 300 --json eval-grasp.json\n"
        "kiwi eval grasp --data data/grasp-lerobot-heldout "
        "--checkpoint runs/grasp-pixels/grasp_model.safetensors --json eval-grasp-pixels.json\n"
        "kiwi eval grasp --episodes 100 --threshold 0.6 --samples 128",
    )
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="first held-out seed")
    p.add_argument("--threshold", type=float, help="commit threshold (default: config)")
    p.add_argument("--samples", type=int, help="K rollouts per forecast (default: config)")
    p.add_argument("--checkpoint", help="model with success head (default: the shipped one)")
    p.add_argument(
        "--data",
        help="score recorded episodes of a LeRobot dataset with next.success instead of "
        "running the simulator (its held-out episodes, or all of a dataset the model never saw)",
    )
    p.add_argument("--dataset-episodes", type=int, help="with --data: at most this many episodes")
    add_config_args(p, "sim_grasp", presets=False)
    p.add_argument("--json", nargs="?", const="eval-grasp.json", metavar="FILE")
    p.add_argument("--plot", default="eval-grasp-reliability.png", help="reliability diagram")
    p.add_argument("--quick", action="store_true", help="3 episodes (smoke)")
    p.add_argument("--no-progress", action="store_true")

    p = command(
        ev_sub,
        "world-model",
        cmd_eval_world_model,
        "the lab on a LeRobot dataset: reconstructions, dreams and error against horizon",
        "Evaluates a world model trained by `kiwi train world-model` on a LeRobotDataset v3.0 "
        "folder, on its held-out episodes (the training config's data.holdout_every rule). "
        "Writes recon.png (camera frames and joints beside the posterior's reconstructions), "
        "imagination.png (from a real start, the prior rolled forward with the recorded "
        "actions: dream against reality, joint traces, where it diverges), horizon.png "
        "(open-loop error against horizon beside persistence) and report.json "
        "(nmse_open_loop and nmse_persistence per horizon for the state, image MSE per "
        "horizon per camera).",
        "kiwi eval world-model --data data/grasp-lerobot "
        "--checkpoint runs/pixels/checkpoint.safetensors --out runs/pixels/eval",
    )
    p.add_argument("--data", required=True, help="LeRobotDataset v3.0 folder")
    p.add_argument("--checkpoint", required=True, help="from `kiwi train world-model`")
    p.add_argument("--out", default="runs/eval-world-model", help="output folder")
    p.add_argument("--episodes", type=int, help="held-out episodes evaluated (default: config)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in OUT")
    p.add_argument("--no-progress", action="store_true")
