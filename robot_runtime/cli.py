"""The ``kiwi`` command. Each subcommand imports what it needs (torch, mujoco) only when it runs,
so ``kiwi --help`` and the hardware tools start fast."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  kiwi lab pendulum --out runs/lab            train the RSSM on Pendulum-v1, plot its dreams
  kiwi lab pendulum --quick --out runs/q      the same in under a minute (smoke test)
  kiwi train world-model --config configs/pendulum.yaml --out runs/wm
  kiwi train agent --config configs/pendulum.yaml --env-steps 20000 --out runs/agent
  kiwi bench world-model --json bench.json
"""


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _add_config_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--config", default=default, help="job config (YAML) under configs/ or a path")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.steps=200 (repeatable)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="apply the config's `quick` preset: tiny data and budgets for smoke tests",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _load(args, cls):
    from .config import load_config

    job, path = load_config(args.config, cls, args.overrides, "quick" if args.quick else None)
    return job, path


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# --- lab -----------------------------------------------------------------------------------


def cmd_lab(args) -> int:
    from .config import PendulumJob
    from .lab import run_lab

    job, path = _load(args, PendulumJob)
    _set_threads(job.train.threads)
    out = Path(args.out)
    print(f"kiwi lab pendulum: config {path}{' (quick preset)' if args.quick else ''} -> {out}")
    report = run_lab(job, out, resume=args.resume, progress=not args.no_progress)
    _print_lab_report(report, out)
    return 0


def _print_lab_report(report: dict, out: Path) -> None:
    rows = [("horizon", "world model nMSE", "persistence nMSE")]
    for h in report["nmse_open_loop"]:
        rows.append(
            (h, f"{report['nmse_open_loop'][h]:.4g}", f"{report['nmse_persistence'][h]:.4g}")
        )
    print(format_table(rows))
    div = report.get("imagination_diverges_at_step")
    print(
        f"trained {report['train_steps']} steps in {report['train_wall_s']:.0f} s; "
        f"imagination of the plotted episode diverges at step {div if div else '> horizon'}"
    )
    print(f"wrote {out}/recon.png, imagination.png, horizon.png, report.json")


def format_table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- train ---------------------------------------------------------------------------------


def cmd_train_world_model(args) -> int:
    from world_model.errors import ReplayError
    from world_model.model import WorldModel
    from world_model.replay import Replay, load_spec
    from world_model.train import CHECKPOINT, WorldModelTrainer, train_world_model

    from .config import PendulumJob, dump_config
    from .lab import prepare_data

    job, path = _load(args, PendulumJob)
    _set_threads(job.train.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(job))
    if args.data:
        replay = Replay(Path(args.data))
        if replay.num_episodes == 0:
            raise ReplayError(f"no episodes (*.npz) in {args.data}")
        spec = load_spec(Path(args.data))
    else:
        replay, _, spec = prepare_data(job, out, not args.no_progress, print)
    steps = args.steps if args.steps is not None else job.train.steps
    ckpt = out / CHECKPOINT
    if args.resume and ckpt.is_file():
        wm, meta, groups = WorldModel.load(ckpt)
        trainer = WorldModelTrainer(wm, job.train)
        trainer.restore(groups, meta)
        print(f"resuming from {ckpt} at step {trainer.step}")
    else:
        wm = WorldModel(job.model, spec)
        trainer = WorldModelTrainer(wm, job.train)
    print(
        f"training on {len(replay)} steps ({replay.num_episodes} episodes) for {steps} steps "
        f"-> {ckpt}"
    )
    train_world_model(
        wm,
        replay,
        job.train,
        out,
        steps,
        job.model_dump(mode="json"),
        trainer,
        not args.no_progress,
    )
    print(f"wrote {ckpt} and {out / 'metrics.jsonl'}")
    return 0


def cmd_train_agent(args) -> int:
    from world_model.train import train_agent

    from .config import PendulumJob, dump_config
    from .envs import make_env

    overrides = list(args.overrides)
    if args.env_steps is not None:
        overrides.append(f"agent.env_steps={args.env_steps}")
    args.overrides = overrides
    job, path = _load(args, PendulumJob)
    _set_threads(job.train.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(job))
    print(f"kiwi train agent: {job.env.id}, {job.agent.env_steps} environment steps -> {out}")
    result = train_agent(
        lambda: make_env(job.env.id, job.env.obs_key),
        job.model,
        job.train,
        job.behavior,
        job.agent,
        out,
        job.model_dump(mode="json"),
        progress=not args.no_progress,
    )
    print(
        format_table(
            [
                ("return_mean", "return_std", "episodes", "env_steps", "wall_s"),
                (
                    f"{result['return_mean']:.1f}",
                    f"{result['return_std']:.1f}",
                    result["episodes"],
                    result["env_steps"],
                    f"{result['wall_s']:.0f}",
                ),
            ]
        )
    )
    print(f"wrote {out / 'eval.json'}")
    return 0


# --- bench ---------------------------------------------------------------------------------


def cmd_bench_world_model(args) -> int:
    from .bench.world_model import run

    return run(args)


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiwi",
        formatter_class=Formatter,
        description="Kiwi runtime: a fast control loop on a learned world model's latent state.",
        epilog=EXAMPLES,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    lab = sub.add_parser("lab", help="the RSSM lab", formatter_class=Formatter)
    lab_sub = lab.add_subparsers(dest="lab", metavar="LAB", required=True)
    pend = lab_sub.add_parser(
        "pendulum",
        formatter_class=Formatter,
        help="train the RSSM on Pendulum-v1; reconstructions and imagination vs reality",
        description="Collects random-policy transitions from gymnasium's Pendulum-v1, trains the "
        "world model, and writes recon.png, imagination.png, horizon.png and "
        "report.json (open-loop nMSE at horizons 1, 5, 15 against persistence).",
        epilog="example:\n  kiwi lab pendulum --out runs/lab\n"
        "  kiwi lab pendulum --quick --out runs/quick --set train.steps=50",
    )
    _add_config_args(pend, "pendulum")
    pend.add_argument("--out", default="runs/lab", help="output folder")
    pend.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    pend.set_defaults(func=cmd_lab)

    train = sub.add_parser(
        "train", help="train a world model or an agent", formatter_class=Formatter
    )
    train_sub = train.add_subparsers(dest="what", metavar="WHAT", required=True)
    wm = train_sub.add_parser(
        "world-model",
        formatter_class=Formatter,
        help="train the world model on episodes",
        description="Trains the world model with a progress bar, periodic metrics "
        "(metrics.jsonl) and atomic checkpoints (checkpoint.safetensors holding "
        "weights, optimizer state and the resolved config).",
        epilog="example:\n  kiwi train world-model --config configs/pendulum.yaml --out runs/wm\n"
        "  kiwi train world-model --config configs/pendulum.yaml --out runs/wm --resume "
        "--steps 8000",
    )
    _add_config_args(wm, "pendulum")
    wm.add_argument("--data", help="folder of episodes (default: the config's data section)")
    wm.add_argument("--out", default="runs/world-model", help="output folder")
    wm.add_argument("--steps", type=int, help="train until this many steps (default: config)")
    wm.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    wm.set_defaults(func=cmd_train_world_model)
    agent = train_sub.add_parser(
        "agent",
        formatter_class=Formatter,
        help="learn a policy in imagination (Pendulum-v1)",
        description="Learns Pendulum-v1 from the agent's own experience: world model plus "
        "actor-critic trained in imagination (horizon 15, lambda-returns). Writes "
        "OUT/eval.json with return_mean, return_std, episodes, env_steps, wall_s.",
        epilog="example:\n  kiwi train agent --config configs/pendulum.yaml --env-steps 20000 "
        "--out runs/agent",
    )
    _add_config_args(agent, "pendulum")
    agent.add_argument("--env-steps", type=int, help="environment steps (default: config)")
    agent.add_argument("--out", default="runs/agent", help="output folder")
    agent.set_defaults(func=cmd_train_agent)

    bench = sub.add_parser(
        "bench", help="speed benchmarks (tables + JSON)", formatter_class=Formatter
    )
    bench_sub = bench.add_subparsers(dest="what", metavar="WHAT", required=True)
    bwm = bench_sub.add_parser(
        "world-model",
        formatter_class=Formatter,
        help="prior step latency, batched rollouts, training step, GEMM throughput",
        description="Times the RSSM at the reference size (deter 256, hidden 256, 32x32 "
        "categorical stoch, 6-dim action, 16-dim vector observation): the batch-1 "
        "prior step, K x H rollouts, one training update at 16 x 64, and float32 "
        "GEMM throughput measured in the same run.",
        epilog="example:\n  kiwi bench world-model --json bench-world-model.json",
    )
    bwm.add_argument(
        "--json",
        nargs="?",
        const="bench-world-model.json",
        metavar="FILE",
        help="also write the figures as JSON",
    )
    bwm.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of the headline figures (1 thread is always measured too)",
    )
    bwm.add_argument("--quick", action="store_true", help="fewer repetitions")
    bwm.set_defaults(func=cmd_bench_world_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from world_model.errors import CheckpointError, ReplayError

    from .config import ConfigError

    try:
        return args.func(args) or 0
    except (ConfigError, CheckpointError, ReplayError) as e:
        print(f"kiwi: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kiwi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
