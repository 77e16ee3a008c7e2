"""kiwi lab / train: the world model, the Pendulum lab, the Dreamer agent and the chunk policy."""

from __future__ import annotations

from pathlib import Path

from .. import jsonout
from ..textui import format_table
from . import Formatter, add_config_args, command, load_any_job, load_job, set_threads


def remove_temp_files(*folders: Path) -> None:
    """Removes temporary files a killed run left in ``folders`` (only the atomic writer's own
    ``.*.kiwi.tmp`` files whose process has exited) and says so."""
    from world_model.atomic import remove_stale_temp_files

    for folder in folders:
        removed = remove_stale_temp_files(folder)
        if removed:
            print(f"removed {len(removed)} temporary file(s) left in {folder} by a killed run")


def check_out(out: Path, name: str, args, resumable: bool = True) -> bool:
    """Refuses to write over a previous run in ``out`` unless asked: with ``out/name`` there,
    --resume continues it (where the command can) and --overwrite starts again; --resume without
    it is an error too. Returns whether to resume. Runs before anything is written to ``out``."""
    from world_model.errors import OutputError

    ckpt = out / name
    resume = bool(getattr(args, "resume", False))
    if resume and not ckpt.is_file():
        raise OutputError(
            f"--resume: {out} holds no {name} to continue; run without --resume to start"
        )
    if ckpt.is_file() and not resume and not args.overwrite:
        how = (
            "--resume to continue it or --overwrite to start again"
            if resumable
            else "--overwrite to replace it"
        )
        raise OutputError(
            f"{out} already holds a checkpoint ({name}{stored_step(ckpt)}); use {how}, or "
            "choose another --out"
        )
    return resume


def stored_step(path: Path) -> str:
    """``", step N"`` from a checkpoint's header, or "" (reads the header only)."""
    import json

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            step = json.loads((f.metadata() or {}).get("step", "null"))
    except Exception:  # a damaged file: the error comes when it is loaded
        return ""
    return f", step {step}" if step is not None else ""


def cmd_lab(args) -> int:
    from world_model.train import CHECKPOINT

    from ..config import PendulumJob
    from ..lab import run_lab

    job, path = load_job(args, PendulumJob)
    set_threads(job.train.threads)
    device, dtype = training_device(args)
    out = Path(args.out)
    resume = check_out(out, CHECKPOINT, args)
    remove_temp_files(out, out / "replay", out / "holdout")
    print(f"kiwi lab pendulum: config {path}{' (quick preset)' if args.quick else ''} -> {out}")
    options = dict(device=device, autocast_dtype=dtype, compile=args.compile)
    report = run_lab(
        job, out, resume=resume, progress=not args.no_progress, trainer_options=options
    )
    rows = [("horizon", "world model nMSE", "persistence nMSE")]
    for h, v in report["nmse_open_loop"].items():
        rows.append((h, f"{v:.4g}", f"{report['nmse_persistence'][h]:.4g}"))
    print(format_table(rows))
    div = report.get("imagination_diverges_at_step")
    print(
        f"trained {report['train_steps']} steps in {report['train_wall_s']:.0f} s; imagination "
        f"of the plotted episode diverges at step {div if div else '> horizon'}"
    )
    print(f"wrote {out}/recon.png, imagination.png, horizon.png, report.json")
    return 0


def cmd_train_world_model(args) -> int:
    from world_model import distributed

    ctx = distributed.from_environment()
    if args.nproc > 1 and not ctx.enabled:
        from world_model.datasets.lerobot_format import DatasetError

        from ..dataset_world_model import is_lerobot_dataset

        if args.data and is_lerobot_dataset(Path(args.data)):  # refused before any launch
            raise DatasetError(ONE_PROCESS)
        return launch_torchrun(args)
    device, dtype = training_device(args, ctx.local_rank if ctx.enabled else None)
    try:
        return train_world_model_here(args, ctx, device, dtype)
    finally:
        distributed.shutdown()


def train_world_model_here(args, ctx, device, dtype) -> int:
    """The body of `kiwi train world-model` in this process (one of torchrun's or the only)."""
    from world_model import distributed
    from world_model.device import describe
    from world_model.errors import ReplayError
    from world_model.model import WorldModel
    from world_model.replay import Replay, load_spec
    from world_model.train import CHECKPOINT, WorldModelTrainer, train_world_model

    from ..config import LeRobotJob, PendulumJob, dump_config
    from ..dataset_world_model import is_lerobot_dataset
    from ..lab import prepare_data

    job, path = load_any_job(args)
    set_threads(job.train.threads)
    out = Path(args.out)
    ckpt = out / CHECKPOINT
    data_arg = args.data or getattr(job.data, "path", None) or getattr(job.data, "episodes", None)
    if (data_arg and is_lerobot_dataset(Path(data_arg))) or isinstance(job, LeRobotJob):
        return train_on_lerobot(args, job, path, Path(data_arg or "."), ctx, device, dtype)
    resume = check_out(out, CHECKPOINT, args)
    distributed.init(ctx, device)  # every rank has checked OUT before rank 0 writes in it
    say = print if ctx.is_main else (lambda *a, **k: None)
    if ctx.is_main:
        remove_temp_files(out, out / "replay", out / "holdout")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(job))
    if isinstance(job, PendulumJob) and not args.data:
        if ctx.is_main:  # rank 0 collects; the others read what it wrote
            replay, _, spec = prepare_data(job, out, not args.no_progress, print)
        distributed.barrier(ctx)
        if not ctx.is_main:
            replay, spec = Replay(out / "replay"), load_spec(out / "replay")
    else:
        data = Path(args.data or job.data.episodes)
        replay = Replay(data)
        if replay.num_episodes == 0:
            raise ReplayError(
                f"no episodes (*.npz) in {data}; record some first, e.g. "
                f"`kiwi collect --env grasp --episodes 1000 --out {data}`"
            )
        spec = load_spec(data)
    steps = args.steps if args.steps is not None else job.train.steps
    options = dict(device=device, autocast_dtype=dtype, compile=args.compile, dist=ctx)
    if resume:
        wm, meta, groups = WorldModel.load(ckpt)
        trainer = WorldModelTrainer(wm, job.train, **options)
        trainer.restore(groups, meta)
        say(f"resuming from {ckpt} at step {trainer.step}")
    else:
        distributed.barrier(ctx)  # every rank is past its check of OUT
        if ctx.is_main:
            ckpt.unlink(missing_ok=True)  # --overwrite: the folder never mixes two runs
        wm = WorldModel(job.model, spec)
        trainer = WorldModelTrainer(wm, job.train, **options)
    say(
        f"kiwi train world-model: {path} ({job.task}); {len(replay)} steps in "
        f"{replay.num_episodes} episodes; {steps} updates -> {ckpt}"
    )
    b, t = job.train.batch_size, job.train.seq_len
    say(
        f"on {describe(device, dtype, args.compile)}; {ctx.world} process(es): effective batch "
        f"{ctx.world} x {b} = {ctx.world * b} sequences of {t} steps per update, learning rate "
        f"{job.train.lr:g} (gradients averaged over processes, lr not scaled)"
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
    say(f"wrote {ckpt} and {out / 'metrics.jsonl'}")
    return 0


def training_device(args, local_rank: int | None = None):
    """(torch.device, autocast dtype or None) from --device and --precision."""
    from world_model.device import resolve_device, resolve_precision

    device = resolve_device(args.device, local_rank)
    return device, resolve_precision(getattr(args, "precision", "float32"), device)


def launch_torchrun(args) -> int:
    """Runs this very command in ``--nproc`` processes under torchrun (on this machine)."""
    import subprocess
    import sys

    argv = list(args.argv)
    for i, a in enumerate(argv):  # drop --nproc N / --nproc=N: the children are the workers
        if a == "--nproc":
            del argv[i : i + 2]
            break
        if a.startswith("--nproc="):
            del argv[i]
            break
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        "-m",
        "robot_runtime.cli",
        *argv,
    ]
    print(f"launching {args.nproc} processes: torchrun --standalone ... {' '.join(argv)}")
    return subprocess.call(cmd)


ONE_PROCESS = (
    "a LeRobot dataset trains in one process for now (its frame cache is built and read by "
    "one): drop --nproc, and use --device cuda for a GPU"
)


def train_on_lerobot(args, job, path: Path, data: Path, ctx, device, dtype) -> int:
    """`kiwi train world-model` on a LeRobotDataset v3.0 folder (robot_runtime/
    dataset_world_model.py), in one process, on ``device`` (--device, --precision, --compile as
    for replay episodes)."""
    from world_model.datasets.lerobot_format import DatasetError
    from world_model.device import describe
    from world_model.train import CHECKPOINT

    from ..config import LeRobotJob
    from ..dataset_world_model import is_lerobot_dataset, train_on_dataset

    if not isinstance(job, LeRobotJob):
        raise DatasetError(
            f"{data} is a LeRobot dataset and {path} a {job.task} job: train it with a "
            "`task: lerobot` config, e.g. --config configs/so101_pixels.yaml"
        )
    if not is_lerobot_dataset(data):
        raise DatasetError(
            f"{data} is not a LeRobotDataset v3.0 folder (no meta/info.json); {path} learns "
            "from one: --data DIR (e.g. from `kiwi collect --format lerobot`)"
        )
    if ctx.enabled:  # under torchrun: every rank would write the same folder
        raise DatasetError(ONE_PROCESS)
    out = Path(args.out)
    resume = check_out(out, CHECKPOINT, args)
    remove_temp_files(out, out / "cache")
    steps = args.steps if args.steps is not None else job.train.steps
    print(
        f"kiwi train world-model: {path} ({job.task}) on {data} -> {out}, on "
        f"{describe(device, dtype, args.compile)}"
    )
    options = dict(device=device, autocast_dtype=dtype, compile=args.compile)
    done = train_on_dataset(job, data, out, steps, resume, not args.no_progress, options=options)
    print(
        f"trained to step {done['steps']} in {done['wall_s']:.0f} s; wrote {out / CHECKPOINT} "
        f"and {out / 'metrics.jsonl'}; evaluate with `kiwi eval world-model --data {data} "
        f"--checkpoint {out / CHECKPOINT} --out {out / 'eval'}`"
    )
    return 0


def cmd_train_agent(args) -> int:
    from world_model.errors import OutputError
    from world_model.replay import episode_files
    from world_model.train import CHECKPOINT, train_agent

    from ..config import PendulumJob, dump_config
    from ..envs import make_env

    if args.env_steps is not None:
        args.overrides = [*args.overrides, f"agent.env_steps={args.env_steps}"]
    job, _ = load_job(args, PendulumJob)
    set_threads(job.train.threads)
    device, dtype = training_device(args)
    out = Path(args.out)
    check_out(out, CHECKPOINT, args, resumable=False)
    replay = out / "replay"
    episodes = episode_files(replay) if replay.is_dir() else []
    if episodes and not args.overwrite:
        raise OutputError(
            f"{replay} holds {len(episodes)} episodes of an earlier run; use --overwrite to "
            "start again, or choose another --out"
        )
    remove_temp_files(out, replay)
    if args.overwrite:  # the agent learns from its own experience only: the old run goes
        for old in [*episodes, out / CHECKPOINT, out / "eval.json"]:
            old.unlink(missing_ok=True)
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
        device=device,
        autocast_dtype=dtype,
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
    if args.ship:
        ship_agent(out, result, invoked_as(args))
    return 0


def ship(name: str, source: Path | None, what: str, command: str, figures: dict) -> Path:
    """Install a trained file as robot_runtime/assets/NAME, with NAME.md saying how it was made
    and what it measured (the file itself carries the same in its metadata)."""
    import shutil

    from world_model.atomic import atomic_path, atomic_write_text

    from ..assets import ASSETS

    target = ASSETS / name
    if source is not None:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    atomic_write_text(
        ASSETS / f"{Path(name).stem}.md",
        f"# {name}\n\n{what}\n\nMade by:\n\n```\n{command}\n```\n\n"
        f"Figures at training: {jsonout.dumps(figures, indent=1)}\n",
    )
    print(f"shipped as {target}")
    return target


def ship_agent(out: Path, result: dict, command: str) -> None:
    """The agent's weights without optimizer state and critics (what `kiwi eval latency` and
    the runtime need), as the shipped Pendulum agent."""
    from world_model.model import WorldModel
    from world_model.train import CHECKPOINT

    from ..assets import ASSETS

    wm, meta, groups = WorldModel.load(out / CHECKPOINT)
    keep = {k: meta[k] for k in ("behavior_config", "env_step", "step") if k in meta}
    names = ("return_mean", "return_std", "episodes", "env_steps", "wall_s")
    figures = {k: result[k] for k in names}
    meta_out = {
        **keep,
        "made_by": f"{command} (optimizer state and critics dropped)",
        "eval": figures,
    }
    wm.save(ASSETS / "pendulum_agent.safetensors", meta_out, {"actor": groups["actor"]})
    ship(
        "pendulum_agent.safetensors",
        None,
        "The Pendulum-v1 Dreamer agent (world model and actor) that `kiwi eval latency` runs "
        "by default.",
        command,
        figures,
    )


def invoked_as(args) -> str:
    import shlex

    return "kiwi " + " ".join(shlex.quote(a) for a in args.argv)


def cmd_train_grasp(args) -> int:
    from ..assets import resolve
    from ..config import GraspJob, dump_config, load_config
    from ..dataset_world_model import is_lerobot_dataset
    from ..grasp_training import GRASP_MODEL, train_grasp

    if args.data and is_lerobot_dataset(Path(args.data)):
        return train_grasp_on_lerobot(args)

    job, _ = load_config(args.config, GraspJob, args.overrides, "quick" if args.quick else None)
    set_threads(job.train.threads)
    device, _ = training_device(args)
    out = Path(args.out)
    check_out(out, GRASP_MODEL, args, resumable=False)
    init = resolve(args.init)  # before anything is written
    remove_temp_files(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(job))
    command = invoked_as(args)
    data = Path(args.data or job.data.episodes)
    print(f"kiwi train grasp: success head on {args.init} with episodes from {data} -> {out}")
    report = train_grasp(job, init, data, out, command, not args.no_progress, device=device)
    rows = [("decisions", "head", "AUROC", "Brier", "ECE")]
    sets = [("recorded, held out", report)]
    if report.get("closed_loop_calibration"):
        sets.append(("closed loop (calibration)", report["closed_loop_calibration"]))
    for label, figures in sets:
        for name in ("rollout", "no_rollout", "rollout_temperature_only"):
            if name not in figures:
                continue
            r = figures[name]
            rows.append((label, name, f"{r['auroc']:.3f}", f"{r['brier']:.3f}", f"{r['ece']:.3f}"))
    print(format_table(rows))
    print(
        f"({report['holdout_decisions']} recorded held-out decisions, success rate "
        f"{report['holdout_success_rate']:.0%}; calibration sigmoid(logit / T + b): "
        f"T {report['temperature']:.2f}, b {report['bias']:+.2f} / no rollout "
        f"T {report['temperature_now']:.2f}, b {report['bias_now']:+.2f})"
    )
    path = out / GRASP_MODEL
    print(f"wrote {path}")
    if args.ship:
        ship(
            "grasp_world_model.safetensors",
            path,
            "The grasp world model with its success heads, shipped so `kiwi sim` and "
            "`kiwi grasp-check` work after install. Its world model was made by `kiwi train "
            "world-model` (that command is in the file's metadata, `made_by`, and in "
            "configs/sim_grasp.yaml's header); the success heads were fitted on it by the "
            "command below.",
            command,
            report,
        )
    return 0


def cmd_train_policy(args) -> int:
    from ..bc_training import POLICY_FILE, BCPolicyJob, train_policy
    from ..config import dump_config, load_config

    overrides = list(args.overrides)
    if args.all_episodes:
        overrides.append("data.successful_only=false")
    job, path = load_config(args.config, BCPolicyJob, overrides, "quick" if args.quick else None)
    set_threads(job.train.threads)
    data = Path(args.data or job.data.dataset)
    out = Path(args.out)
    check_out(out, POLICY_FILE, args, resumable=False)
    remove_temp_files(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)  # --overwrite: one run's metrics only
    (out / "config.yaml").write_text(dump_config(job))
    which = "successful" if job.data.successful_only else "all"
    print(
        f"kiwi train policy: {path}{' (quick preset)' if args.quick else ''}; {which} episodes "
        f"of {data}; {job.train.steps} steps -> {out / POLICY_FILE}"
    )
    figures = train_policy(job, data, out, invoked_as(args), not args.no_progress)
    val = figures.get("val_l1")
    print(
        format_table(
            [
                ("episodes", "frames", "steps", "train L1", "held-out L1", "decode_s", "train_s"),
                (
                    figures["episodes"],
                    figures["frames"],
                    figures["step"],
                    f"{figures['train_l1']:.4f}",
                    "-" if val is None else f"{val:.4f}",
                    f"{figures['decode_s']:.0f}",
                    f"{figures['train_s']:.0f}",
                ),
            ]
        )
    )
    print(
        f"wrote {out / POLICY_FILE}, {out / 'metrics.jsonl'}; next: kiwi eval policy "
        f"--checkpoint {out / POLICY_FILE}"
    )
    return 0


PIXEL_GRASP_MODEL = "grasp_pixels.safetensors"  # `kiwi train grasp --data DIR --ship`


def train_grasp_on_lerobot(args) -> int:
    """`kiwi train grasp --data DIR` on a LeRobot dataset with next.success (robot_runtime/
    dataset_grasp.py); the settings are the world model's job (its `gate` section), with --set."""
    from ..assets import resolve
    from ..dataset_grasp import train_grasp_on_dataset
    from ..grasp_training import GRASP_MODEL

    set_threads(1)
    out = Path(args.out)
    check_out(out, GRASP_MODEL, args, resumable=False)
    init = resolve(args.init)  # before anything is written
    remove_temp_files(out, out / "cache")
    data = Path(args.data)
    print(f"kiwi train grasp: success heads on {args.init} from the episodes of {data} -> {out}")
    report = train_grasp_on_dataset(
        init, data, out, invoked_as(args), args.overrides, not args.no_progress
    )
    rows = [("decisions", "head", "AUROC", "Brier", "ECE")]
    for name in ("rollout", "no_rollout"):
        r = report[name]
        rows.append(
            ("calibration set", name, f"{r['auroc']:.3f}", f"{r['brier']:.3f}", f"{r['ece']:.3f}")
        )
    print(format_table(rows))
    print(
        f"({report['train_decisions']} decisions fitted, {report['holdout_decisions']} "
        f"calibrated on, success rate {report['holdout_success_rate']:.0%}; score held-out "
        f"episodes with `kiwi eval grasp --data {data} --checkpoint {out / GRASP_MODEL}`)"
    )
    if args.ship:
        ship(
            PIXEL_GRASP_MODEL,
            out / GRASP_MODEL,
            "The grasp forecast from pixels (`--checkpoint shipped:grasp_pixels`): a world model "
            "trained by `kiwi train world-model --config configs/so101_pixels.yaml` on a LeRobot "
            "dataset (the recipe is in that config's header), with success heads fitted on it "
            "by the command below.",
            invoked_as(args),
            report,
        )
    return 0


def register(sub) -> None:
    lab = sub.add_parser("lab", help="the RSSM lab", formatter_class=Formatter)
    lab_sub = lab.add_subparsers(dest="lab", metavar="LAB", required=True)
    p = command(
        lab_sub,
        "pendulum",
        cmd_lab,
        "train the RSSM on Pendulum-v1; reconstructions and imagination vs reality",
        "Collects random-policy transitions from gymnasium's Pendulum-v1, trains the world "
        "model, and writes recon.png, imagination.png, horizon.png and report.json "
        "(open-loop nMSE at horizons 1, 5, 15 against persistence).",
        "kiwi lab pendulum --out runs/lab\n"
        "kiwi lab pendulum --quick --out runs/quick --set train.steps=50",
    )
    add_config_args(p, "pendulum")
    p.add_argument("--out", default="runs/lab", help="output folder")
    add_resume_overwrite(p)
    add_device_args(p)

    train = sub.add_parser(
        "train", help="train a world model or an agent", formatter_class=Formatter
    )
    train_sub = train.add_subparsers(dest="what", metavar="WHAT", required=True)
    p = command(
        train_sub,
        "world-model",
        cmd_train_world_model,
        "train the world model on episodes",
        "Trains the world model of a job file (configs/pendulum.yaml collects random "
        "Pendulum-v1 data itself; configs/sim_grasp.yaml reads episodes from `kiwi collect`) "
        "with a progress bar, periodic metrics (metrics.jsonl) and atomic checkpoints "
        "(checkpoint.safetensors: weights, optimizer state and the resolved config).",
        "kiwi train world-model --config configs/pendulum.yaml --out runs/wm\n"
        "kiwi train world-model --config configs/sim_grasp.yaml --data data/grasp "
        "--out runs/grasp-wm\n"
        "kiwi train world-model --config configs/pendulum.yaml --out runs/wm --resume "
        "--steps 8000\n"
        "kiwi train world-model --config configs/sim_grasp.yaml --data data/grasp "
        "--out runs/grasp-wm --nproc 2 --set train.threads=1   # 2 processes (DDP)\n"
        "torchrun --nproc_per_node 4 -m robot_runtime.cli train world-model "
        "--config configs/sim_grasp.yaml --data data/grasp --out runs/grasp-wm --device cuda",
    )
    add_config_args(p, "pendulum")
    p.add_argument("--data", help="folder of episodes (default: the config's data section)")
    p.add_argument("--out", default="runs/world-model", help="output folder")
    p.add_argument("--steps", type=int, help="train until this many steps (default: config)")
    add_resume_overwrite(p)
    add_device_args(p, nproc=True)
    p = command(
        train_sub,
        "agent",
        cmd_train_agent,
        "learn a policy in imagination (Pendulum-v1)",
        "Learns Pendulum-v1 from the agent's own experience: world model plus actor-critic "
        "trained in imagination (horizon 15, lambda-returns). Writes OUT/eval.json with "
        "return_mean, return_std, episodes, env_steps, wall_s (50 evaluation episodes).",
        "kiwi train agent --config configs/pendulum.yaml --env-steps 20000 --out runs/agent",
    )
    add_config_args(p, "pendulum")
    p.add_argument("--env-steps", type=int, help="environment steps (default: config)")
    p.add_argument("--out", default="runs/agent", help="output folder")
    add_resume_overwrite(p, resume=False)
    p.add_argument(
        "--ship",
        action="store_true",
        help="also replace the shipped agent (robot_runtime/assets/pendulum_agent.safetensors)",
    )
    add_device_args(
        p,
        "where the networks learn and act",
        precision="of the world model's updates; ",
        compile=False,
    )
    p = command(
        train_sub,
        "grasp",
        cmd_train_grasp,
        "fit the grasp-success head on a trained grasp world model",
        "From collected grasps (`kiwi collect`), finds each decision (the tick the gripper "
        "starts to close), rolls the world model's prior through the recorded commit K times "
        "from the belief there, and fits a success head on the states reached (and, as an "
        "ablation, one on the belief alone); calibrates both with a temperature on held-out "
        "episodes. --ship replaces the shipped model used by `kiwi sim` and `kiwi grasp-check`.",
        "kiwi train grasp --config configs/sim_grasp.yaml --data data/grasp "
        "--init runs/grasp-wm/checkpoint.safetensors --out runs/grasp --ship\n"
        "kiwi train grasp --data data/grasp-lerobot "
        "--init runs/pixels/checkpoint.safetensors --out runs/grasp-pixels",
    )
    add_config_args(p, "sim_grasp")
    p.add_argument("--init", required=True, help="world model from `kiwi train world-model`")
    p.add_argument(
        "--data",
        help="episodes from `kiwi collect` (default: the config's), or a LeRobot dataset with "
        "next.success (then --init is a world model trained on LeRobot data and the settings "
        "are its job's `gate` section)",
    )
    p.add_argument(
        "--ship",
        action="store_true",
        help="also replace the shipped model (grasp_world_model; with a LeRobot --data: "
        "grasp_pixels)",
    )
    p.add_argument("--out", default="runs/grasp", help="output folder")
    add_resume_overwrite(p, resume=False)
    add_device_args(
        p,
        "where the world model's rollouts run (the heads and the closed-loop calibration stay "
        "on the CPU)",
        precision=None,
        compile=False,
    )

    p = command(
        train_sub,
        "policy",
        cmd_train_policy,
        "behaviour-clone a chunk policy from a LeRobot dataset",
        "Trains the project's own action-chunk policy (ACT-style: wrist image and joint state "
        "in, the next 50 actions out; L1 loss on actions normalised by the dataset's "
        "stats.json) on a LeRobot v3.0 folder, by default its successful episodes "
        "(next.success at an episode's end). The videos are decoded once and kept in memory. "
        "Writes OUT/policy.safetensors (weights, normalisation, config and this command), "
        "metrics.jsonl (train and held-out L1) and config.yaml. Run it with `kiwi eval policy` "
        "or as the slow process's policy (robot_runtime.bc_policy:load).",
        "kiwi train policy --data data/grasp-lerobot --out runs/policy\n"
        "kiwi train policy --data data/grasp-lerobot --all-episodes --set train.steps=2000\n"
        "kiwi train policy --quick --data data/grasp-lerobot --out runs/policy-quick",
    )
    add_config_args(p, "bc_policy")
    p.add_argument("--data", help="LeRobot v3.0 dataset folder (default: the config's)")
    p.add_argument(
        "--all-episodes",
        action="store_true",
        help="learn from every episode, not only the successful ones",
    )
    p.add_argument("--out", default="runs/policy", help="output folder")
    add_resume_overwrite(p, resume=False)


def add_device_args(
    p,
    where: str = "where to train",
    precision: str | None = "",
    compile: bool = True,
    nproc: bool = False,
) -> None:
    """--device (``where``: its help), --precision (unless ``precision`` is None; its help's
    prefix), --compile, and --nproc where the command runs under torchrun."""
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help=f"{where} (auto: cuda if torch sees a GPU, else cpu)",
    )
    if precision is not None:
        p.add_argument(
            "--precision",
            default="auto",
            choices=["auto", "float32", "bfloat16"],
            help=f"{precision}auto: bfloat16 autocast on CUDA, float32 elsewhere",
        )
    if compile:
        p.add_argument(
            "--compile",
            action="store_true",
            help="run the update through torch.compile (first steps compile; see the README's "
            "figures before using it on a CPU)",
        )
    if nproc:
        p.add_argument(
            "--nproc",
            type=int,
            default=1,
            help="training processes (torchrun, DistributedDataParallel; gloo on CPU, nccl on "
            "CUDA); each takes train.threads threads",
        )


def add_resume_overwrite(p, resume: bool = True) -> None:
    """OUT holding a previous run is refused unless one of these says what to do with it."""
    group = p.add_mutually_exclusive_group()
    if resume:
        group.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an OUT that holds a previous run (its checkpoint is replaced)",
    )
