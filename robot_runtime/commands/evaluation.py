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
        "kiwi eval grasp --episodes 100 --threshold 0.6 --samples 128",
    )
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="first held-out seed")
    p.add_argument("--threshold", type=float, help="commit threshold (default: config)")
    p.add_argument("--samples", type=int, help="K rollouts per forecast (default: config)")
    p.add_argument("--checkpoint", help="model with success head (default: the shipped one)")
    add_config_args(p, "sim_grasp", presets=False)
    p.add_argument("--json", nargs="?", const="eval-grasp.json", metavar="FILE")
    p.add_argument("--plot", default="eval-grasp-reliability.png", help="reliability diagram")
    p.add_argument("--quick", action="store_true", help="3 episodes (smoke)")
    p.add_argument("--no-progress", action="store_true")

    from ..chunk_eval import CHUNK_EVAL_SEED

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
