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
