"""kiwi eval: the headline evaluations, as tables, plots and JSON."""

from __future__ import annotations

from pathlib import Path

from . import Formatter, add_config_args, command, grasp_curve


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


def cmd_eval_policy(args) -> int:
    import torch

    from .. import jsonout
    from ..bc_eval import evaluate_policy
    from ..bc_policy import SHIPPED, load
    from ..bc_training import BCPolicyJob
    from ..config import load_config
    from ..textui import format_table

    torch.set_num_threads(1)
    job, _ = load_config(args.config, BCPolicyJob, args.overrides)
    policy = load(args.checkpoint)
    execute = args.execute or job.eval.execute_steps
    episodes = 2 if args.quick else args.episodes
    episode_s = 1.0 if args.quick else (args.episode_s or job.eval.episode_s)
    seed = job.eval.seed if args.seed is None else args.seed
    size = args.image_size or policy.image_size
    print(
        f"kiwi eval policy: {args.checkpoint or SHIPPED} on {episodes} held-out grasps "
        f"(seeds {seed}..{seed + episodes - 1}), {execute} of {policy.chunk} rows per query, "
        f"no delay"
    )
    result = evaluate_policy(
        policy, episodes, seed, execute, episode_s, size, args.scripted, not args.no_progress
    )
    result["summary"]["checkpoint"] = args.checkpoint or SHIPPED
    result["summary"]["made_by"] = jsonout.to_jsonable(policy.meta.get("made_by"))
    rows = [("policy", "success", "+-", "completion_s (mean)", "median")]
    named = [("learned", result["summary"])]
    if args.scripted:
        named.append(("scripted (teacher)", result["summary"]["scripted"]))
    for name, s in named:
        rows.append(
            (
                name,
                f"{s['success_rate']:.0%} ({s['successes']}/{s['episodes']})",
                f"{s['success_rate_se']:.0%}",
                "-" if s["completion_s_mean"] is None else f"{s['completion_s_mean']:.2f}",
                "-" if s["completion_s_median"] is None else f"{s['completion_s_median']:.2f}",
            )
        )
    print(format_table(rows))
    print(f"policy query: {result['summary']['query_ms_mean']:.1f} ms mean")
    if args.json:
        jsonout.write_json(Path(args.json), result, indent=1)
        print(f"wrote {args.json}")
    return 0


def eval_grasp_on_lerobot(args) -> int:
    """`kiwi eval grasp --data DIR`: the forecast at every labelled episode's decision."""
    import tempfile

    import torch

    from world_model.errors import KiwiError

    from ..assets import resolve
    from ..dataset_grasp import evaluate_grasp_on_dataset
    from ..grasp_eval import noise_floor, write

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
    print(
        f"(a perfectly calibrated forecast would score ECE "
        f"{noise_floor(summary['ece_if_calibrated'])} (median / 95th percentile) by chance on "
        "this many decisions)"
    )
    write(summary, records, args.json, Path(args.plot))
    return 0


def cmd_eval_world_model(args) -> int:
    import torch

    from world_model.errors import OutputError

    from ..assets import resolve
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
        resolve(args.checkpoint), Path(args.data), out, args.episodes, not args.no_progress
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


def parse_episodes(text: str, tasks: list[str]) -> dict[str, int]:
    """``--episodes 30`` or ``--episodes grasp=10,grasp_moving=20`` -> episodes per task."""
    try:
        if "=" not in text:
            counts = dict.fromkeys(tasks, int(text))
        else:
            counts = {k: int(v) for k, v in (part.split("=", 1) for part in text.split(","))}
    except ValueError:
        raise ValueError(f"--episodes {text!r}: a count, or TASK=COUNT,...") from None
    missing = [t for t in tasks if t not in counts]
    if missing or any(c < 1 for c in counts.values()):
        raise ValueError(f"--episodes {text!r}: at least 1 for each task ({', '.join(tasks)})")
    return {t: counts[t] for t in tasks}


def report_chunks(args) -> int:
    """The table, verdicts and plot again from a finished run's JSON rows."""
    import json

    from ..chunk_report import plot, print_table, verdicts

    try:
        rows = json.loads(Path(args.from_json).read_text())
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and {"task", "mode", "delay_ms", "metric", "value"} <= set(r)
            for r in rows
        ):
            raise ValueError("not a list of {task, mode, delay_ms, metric, value} rows")
    except (OSError, ValueError) as e:
        raise ValueError(f"--from-json {args.from_json}: {e}") from None
    if Path(args.plot).exists() and not args.force:
        raise ValueError(f"{args.plot} exists (pass --force to replace it)")
    print_table(rows)
    print()
    for line in verdicts(rows):
        print(line)
    plot(rows, Path(args.plot))
    print(f"wrote {args.plot}")
    return 0


def cmd_eval_chunks(args) -> int:
    import torch

    from ..chunk_eval import DELAYS_MS, MODES, TASKS, run_grid
    from ..chunk_report import plot, print_table, verdicts
    from ..config import GraspJob, load_config
    from ..jsonout import write_json

    torch.set_num_threads(1)
    if args.from_json:
        return report_chunks(args)
    tasks = [t for t in args.tasks.split(",") if t]
    modes = [m for m in args.modes.split(",") if m]
    for name, given, known in (("task", tasks, TASKS), ("mode", modes, MODES)):
        unknown = [g for g in given if g not in known]
        if unknown or not given:
            raise ValueError(f"--{name}s: {unknown or 'none'}; choose from {', '.join(known)}")
    try:
        delays = [int(d) for d in args.delays.split(",") if d] or list(DELAYS_MS)
    except ValueError:
        raise ValueError(f"--delays {args.delays!r}: milliseconds, comma separated") from None
    if any(d < 0 or d > 5000 for d in delays):
        raise ValueError("--delays: each must be within 0..5000 ms")
    if args.quick:
        delays = [d for d in delays if d in (0, 300)] or delays[:2]
    episodes = {t: 1 for t in tasks} if args.quick else parse_episodes(args.episodes, tasks)
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    outputs = [Path(args.plot)] + ([Path(args.json)] if args.json else [])
    for path in outputs:
        if path.exists() and not args.force:
            raise ValueError(f"{path} exists (pass --force to replace it)")
    job, _ = load_config(args.config, GraspJob, args.overrides)
    from ..chunk_policies import load_policy

    load_policy(args.policy)  # a bad --policy fails here, in one line, before any worker
    print(
        f"kiwi eval chunks: episodes per cell {episodes} (seeds {args.seed}..), modes "
        f"{','.join(modes)}, delays {delays} ms, policy {args.policy}, {args.workers} workers"
    )
    rows = run_grid(
        job,
        args.policy,
        tasks,
        modes,
        delays,
        episodes,
        args.seed,
        args.workers,
        max_s=1.5 if args.quick else None,
        progress=not args.no_progress,
    )
    print_table(rows)
    print()
    for line in verdicts(rows):
        print(line)
    if args.json:
        write_json(Path(args.json), rows, indent=1)
        print(f"wrote {args.json}")
    plot(rows, Path(args.plot))
    print(f"wrote {args.plot}")
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
        "policy",
        cmd_eval_policy,
        "a chunk policy closed-loop in the simulated grasp, no delay",
        "Plays held-out kiwi/Grasp-v0 episodes (seeds 500000.. by default, outside every "
        "training and evaluation range of configs/sim_grasp.yaml) with the policy re-queried "
        "every N steps (the first N rows of each chunk executed at 50 Hz), and reports the "
        "success rate (with its binomial standard error) and the time to a completed grasp "
        "(cube lifted and held 0.5 s). --scripted also plays the scripted teacher on the same "
        "seeds.",
        "kiwi eval policy --episodes 50 --json eval-policy.json\n"
        "kiwi eval policy --checkpoint runs/policy/policy.safetensors --execute 5 --scripted",
    )
    p.add_argument("--checkpoint", help="from `kiwi train policy` (default: the shipped one)")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, help="first held-out seed (default: the config's eval.seed)")
    p.add_argument("--execute", type=int, help="rows executed per query (default: config)")
    p.add_argument("--episode-s", type=float, help="longest episode, s (default: config)")
    p.add_argument(
        "--image-size", type=int, help="render the camera at this size (default: the policy's)"
    )
    p.add_argument("--scripted", action="store_true", help="also play the scripted teacher")
    add_config_args(p, "bc_policy", presets=False)
    p.add_argument("--json", nargs="?", const="eval-policy.json", metavar="FILE")
    p.add_argument("--quick", action="store_true", help="2 one-second episodes (smoke)")
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

    grasp_curve.register(ev_sub)

    from ..config import CHUNK_EVAL_SEED

    p = command(
        ev_sub,
        "chunks",
        cmd_eval_chunks,
        "late action chunks executed latest, blend or latent, against the policy's delay",
        "In lockstep, a chunk policy (the scripted grasp stand-in, or yours) answers each "
        "observation with a chunk of joint targets that arrives DELAY ms later; the runtime's "
        "control step executes it as the newest chunk (latest), LeRobot's 0.3/0.7 blend over "
        "the overlap (blend), or placed on the world model's belief at execution time "
        "(latent: moved with the object, joined without a jump, rolled forward by the prior "
        "and refused if unsafe). Tasks: grasp (kiwi/Grasp-v0) and grasp_moving "
        "(kiwi/GraspMoving-v0: the cube slides at 2-4 cm/s). Reports success rate, completion "
        "time and RMS jerk at chunk boundaries per task, mode and delay, checks issue 13's "
        "targets, plots success and jerk against delay and writes JSON rows "
        "{task, mode, delay_ms, metric, value} (plus episodes and ci95). "
        "--policy module:factory loads factory() -> policy(observation) -> [T, 6] "
        "(see robot_runtime/chunk_policies.py for the observation's keys).",
        "kiwi eval chunks --json eval-chunks.json\n"
        "kiwi eval chunks --tasks grasp_moving --delays 0,300 --episodes 40\n"
        "kiwi eval chunks --episodes grasp=20,grasp_moving=40 --workers 4\n"
        "kiwi eval chunks --policy my_policies:make_policy --quick\n"
        "kiwi eval chunks --from-json eval-chunks.json --plot eval-chunks.png --force",
    )
    p.add_argument("--tasks", default="grasp,grasp_moving", help="comma separated")
    p.add_argument("--modes", default="latest,blend,latent", help="comma separated")
    p.add_argument(
        "--delays", default="0,100,200,300,500,800", help="policy delays in ms, comma separated"
    )
    p.add_argument(
        "--episodes",
        default="grasp=6,grasp_moving=10",
        help="episodes per (task, mode, delay): a count, or TASK=COUNT,... (the default took "
        "17 minutes with 2 workers on 2 loaded cores)",
    )
    p.add_argument("--seed", type=int, default=CHUNK_EVAL_SEED, help="first held-out seed")
    p.add_argument(
        "--policy", default="scripted", help="scripted, or module:factory (a chunk policy)"
    )
    p.add_argument("--workers", type=int, default=2, help="processes (each loads the model)")
    add_config_args(p, "sim_grasp", presets=False)
    p.add_argument(
        "--json",
        nargs="?",
        const="eval-chunks.json",
        metavar="FILE",
        help="write the JSON rows here (bare --json: eval-chunks.json)",
    )
    p.add_argument("--plot", default="eval-chunks.png", help="where the plot goes")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument(
        "--from-json", metavar="FILE", help="no run: the table, verdicts and plot of FILE's rows"
    )
    p.add_argument(
        "--quick", action="store_true", help="1 short episode per cell, delays 0 and 300 (smoke)"
    )
    p.add_argument("--no-progress", action="store_true")
