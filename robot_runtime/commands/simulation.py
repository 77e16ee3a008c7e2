"""kiwi collect / sim replay: data from the simulated arm, and episodes shown to a person."""

from __future__ import annotations

import time
from pathlib import Path

from .. import jsonout
from ..textui import format_table
from . import add_config_args, command


def cmd_collect(args) -> int:
    from ..collect import collect_grasps

    cameras = tuple(c for c in args.cameras.split(",") if c) if args.cameras else ()
    lerobot = args.format == "lerobot"
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: at least 1")
    print(
        f"kiwi collect: {args.episodes} scripted grasps (seeds {args.seed}.."
        f"{args.seed + args.episodes - 1}) -> {args.out}"
        + (" (LeRobotDataset v3.0)" if lerobot else "")
        + (f", {args.workers} simulator processes" if args.workers > 1 else "")
    )
    if lerobot:
        from ..collect import LEROBOT_CAMERAS, collect_grasps_lerobot

        summary = collect_grasps_lerobot(
            Path(args.out),
            args.episodes,
            args.seed,
            cameras or LEROBOT_CAMERAS,
            args.image_size,
            args.image_storage,
            args.task,
            progress=not args.no_progress,
            log=print,
            workers=args.workers,
        )
    else:
        summary = collect_grasps(
            Path(args.out),
            args.episodes,
            args.seed,
            cameras,
            args.image_size,
            progress=not args.no_progress,
            log=print,
            workers=args.workers,
        )
    rate = summary["success_rate"]
    print(
        format_table(
            [
                ("episodes", "successes", "success rate", "steps", "wall_s"),
                (
                    summary["episodes"],
                    summary["successes"],
                    "-" if rate is None else f"{rate:.1%}",
                    summary["steps"],
                    f"{summary['wall_s']:.1f}",
                ),
            ]
        )
    )
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items() if v))
    if args.json:
        print(jsonout.dumps(summary))
    return 0


def cmd_sim_replay(args) -> int:
    from sim.video import render_episode, write_video
    from world_model.replay import load_episode

    episode = load_episode(Path(args.episode))
    cameras = tuple(args.cameras.split(","))
    frames = render_episode(episode, cameras, (args.height, args.width), args.every)
    fps = 50.0 / args.every
    write_video(frames, Path(args.video), fps)
    outcome = "success" if bool(episode.get("success", [False])[0]) else "failure"
    print(f"wrote {args.video}: {len(frames)} frames at {fps:g} fps ({outcome})")
    return 0


def cmd_sim(args) -> int:
    if getattr(args, "sim_command", None) == "replay":
        return cmd_sim_replay(args)
    from ..config import GraspJob, load_config
    from ..dryrun import print_summary, run_sim

    overrides = list(args.overrides)
    if args.attempts is not None:
        overrides.append(f"sim.attempts={args.attempts}")
    job, path = load_config(args.config, GraspJob, overrides, "quick" if args.quick else None)
    out = Path(args.out or time.strftime("runs/sim-%Y%m%d-%H%M%S"))
    print(
        f"kiwi sim: {job.sim.attempts} grasp attempt(s), fast loop {job.runtime.rate_hz:g} Hz "
        f"({job.runtime.mode}), perception {job.slow.rate_hz:g} Hz with "
        f"{job.slow.latency_ms:g} ms latency -> {out}  (Ctrl-C stops safely)"
    )
    rerun = Path(args.rerun) if args.rerun else None
    record = Path(args.record) if args.record else None
    if record is not None:  # a folder the runtime could not append to: say so before starting
        from ..attempt_recording import check_record_dir, record_features

        size = job.slow.image_size
        features = record_features(6, {"wrist": (size, size)}, seed=True)
        check_record_dir(record, int(round(job.runtime.rate_hz)), features)
    vla = args.policy or (DEFAULT_VLA if args.vla else None)
    if vla is not None:
        print(
            f"VLA mode: the slow process runs {vla} and posts its action chunks; the runtime "
            f"follows them ({job.runtime.chunk_mode} mode), the grasp state machine is off"
        )
    summary = run_sim(job, out, live=not args.no_live, rerun=rerun, record=record, vla=vla)
    print_summary(summary, out)
    if record is not None:
        print_recorded(record)
    return 0


# `kiwi sim --vla`: the project's own learned chunk policy (`kiwi train policy`)
DEFAULT_VLA = "robot_runtime.bc_policy:load"


def print_recorded(record: Path) -> None:
    """One line on the dataset `--record` wrote into."""
    from world_model.datasets import DatasetError, LeRobotReader

    try:
        with LeRobotReader(record) as ds:
            n, frames = ds.num_episodes, ds.num_frames
    except DatasetError as e:
        print(f"record: {e}")
        return
    print(f"recorded: {record} holds {n} episode(s), {frames} frames (kiwi dataset info {record})")


def cmd_slow(args) -> int:
    from ..config import GraspJob, load_config
    from ..policy_runner import load_policy, parse_policy_args
    from ..slow import SlowProcess

    job, path = load_config(args.config, GraspJob, args.overrides)
    if args.policy_arg and not args.policy:
        raise ValueError("--policy-arg needs --policy")
    if args.client_key and not args.server_key:
        raise ValueError("--client-key needs --server-key (the runtime's public key)")
    policy = load_policy(args.policy, parse_policy_args(args.policy_arg)) if args.policy else None
    keys = {
        "server_key": Path(args.server_key) if args.server_key else None,
        "client_key": Path(args.client_key) if args.client_key else None,
    }
    proc = SlowProcess(
        job,
        vla=args.vla,
        policy=policy,
        policy_timeout_s=args.policy_timeout,
        task=args.task,
        camera_clock=args.camera_clock,
        **keys,
    )
    what = (
        f" + policy {args.policy}"
        if args.policy
        else " + VLA chunks (scripted)"
        if args.vla
        else ""
    )
    print(
        f"kiwi slow: perception{what} at {job.slow.rate_hz:g} Hz, "
        f"{job.slow.latency_ms:g} ms latency; camera {job.link.camera} -> {job.link.obs}",
        flush=True,
    )
    try:
        stats = proc.run(args.duration)
    except KeyboardInterrupt:
        stats = proc.stats
    finally:
        proc.close()
    print(
        f"frames {stats.frames}, observations posted {stats.posted}, cube not found "
        f"{stats.misses}, malformed frames {stats.rejected}"
        + (
            f", chunks {stats.chunks}, policy refusals {stats.policy_rejections or 0}"
            if proc.runner is not None
            else ""
        )
    )
    return 0


def register(sub) -> None:
    p = command(
        sub,
        "collect",
        cmd_collect,
        "record scripted grasps in the simulated arm",
        "Runs the scripted grasp policy in kiwi/Grasp-v0 (domain-randomised cube, noisy "
        "perception) and writes each episode in the world model's replay format, with "
        "per-step success labels and ground truth, plus spec.json. Prints the success "
        "rate. Appends to OUT; seeds are SEED .. SEED+N-1, so disjoint seed ranges give "
        "disjoint training and evaluation sets. Seeds already stored in OUT are skipped, so "
        "re-running the same command after a crash resumes it. With --format lerobot the "
        "episodes go into a LeRobotDataset v3.0 folder instead (`kiwi dataset info OUT` "
        "shows it; lerobot's LeRobotDataset loads it).",
        "kiwi collect --env grasp --episodes 200 --out data/grasp --seed 0\n"
        "kiwi collect --env grasp --episodes 20 --out data/grasp-img --cameras wrist\n"
        "kiwi collect --env grasp --format lerobot --episodes 50 --out data/grasp-lerobot\n"
        "kiwi collect --env grasp --episodes 1000 --out data/grasp --workers 2",
    )
    p.add_argument("--env", choices=["grasp"], default="grasp", help="which simulated task")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes")
    p.add_argument(
        "--out",
        required=True,
        help="folder of episodes (created; appended to, stored seeds skipped)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    p.add_argument(
        "--format",
        choices=["npz", "lerobot"],
        default="npz",
        help="npz: the world model's replay episodes; lerobot: a LeRobotDataset v3.0 folder "
        "(so101_follower, 50 fps, observation.state/action in LeRobot's units, cameras as "
        "video, next.reward/done/success, the task string)",
    )
    p.add_argument(
        "--cameras",
        default="",
        help="record images too: front,wrist (--format lerobot records wrist,front unless told)",
    )
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    p.add_argument(
        "--image-storage",
        choices=["video", "image"],
        default="video",
        help="--format lerobot: cameras as mp4 (AV1 when PyAV has it) or PNG in the parquet",
    )
    p.add_argument(
        "--task", default=None, help="--format lerobot: the task string (pick up the red cube)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="simulator processes (one per core is right); the episodes are the same for any "
        "number, and a LeRobot folder gets them in seed order",
    )
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    sim = command(
        sub,
        "sim",
        cmd_sim,
        "the dry run: simulated arm + slow perception + runtime, live status",
        "Starts the simulated world (MuJoCo, real time), the slow perception process and the "
        "runtime as separate processes on loopback, runs grasp attempts on the world model's "
        "latent with latency-compensated corrections, shows live status and ends with a summary "
        "table and a run folder (telemetry.jsonl, summary.json, estimate_vs_truth.png). "
        "`kiwi sim replay` renders a recorded episode instead.",
        "kiwi sim\nkiwi sim --quick --out runs/sim-quick\n"
        "kiwi sim --attempts 10 --set runtime.mode=stale\n"
        "kiwi sim --rerun runs/sim.rrd && rerun runs/sim.rrd\n"
        "kiwi sim --attempts 20 --record data/my-grasps && kiwi dataset info data/my-grasps\n"
        "kiwi sim --vla --set runtime.chunk_mode=latent     (the learned chunk policy drives)",
    )
    add_config_args(sim, "sim_grasp")
    sim.add_argument("--out", help="run folder (default runs/sim-<time>)")
    sim.add_argument("--attempts", type=int, help="grasp attempts (default: config)")
    sim.add_argument("--no-live", action="store_true", help="no live status line")
    sim.add_argument(
        "--rerun",
        metavar="FILE.rrd",
        help="also record the run for Rerun's viewer (camera, joints, the cube as estimated, "
        "seen and true, phases, gate, loop timing; needs rerun-sdk): rerun FILE.rrd",
    )
    sim.add_argument(
        "--record",
        metavar="DIR",
        help="write each attempt as an episode of a LeRobotDataset v3.0 folder (created, or "
        "appended to): joints read, targets commanded, wrist frames, the gate's P(success) "
        "at each decision and the outcome; `kiwi dataset info DIR` shows it",
    )
    sim.add_argument(
        "--vla",
        action="store_true",
        help="a policy drives instead of the grasp state machine: the slow process runs it on "
        f"each frame and posts action chunks, the runtime follows them in runtime.chunk_mode "
        f"(default policy: the shipped learned one, {DEFAULT_VLA})",
    )
    sim.add_argument(
        "--policy",
        metavar="MODULE:FACTORY",
        help="with or without --vla: this policy instead (factory() -> policy(observation) -> "
        "[T, 6] chunk; docs/slow_process.md), or `scripted`: the scripted grasp replanned from "
        "each detection (the stand-in the learned policy was cloned from)",
    )
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    p = command(
        sim_sub,
        "replay",
        cmd_sim_replay,
        "render a recorded episode to a GIF or MP4",
        "Re-renders a grasp episode written by `kiwi collect` from its recorded joint and "
        "cube positions: front and wrist cameras side by side.",
        "kiwi sim replay data/grasp/20261125T120000-1a2b3c4d-261.npz --video grasp.gif",
    )
    p.add_argument("episode", help="an episode file (.npz) from `kiwi collect`")
    p.add_argument("--video", required=True, help="output file, .gif or .mp4")
    p.add_argument("--cameras", default="front,wrist", help="cameras side by side")
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--every", type=int, default=2, help="render every N-th step")

    p = command(
        sub,
        "slow",
        cmd_slow,
        "the slow perception/VLA process on its own",
        "Reads the camera stream (frames with the joints at capture), finds the cube, waits "
        "the configured latency and posts observations stamped with their capture time "
        "to the runtime; --vla also attaches action chunks (in sim: the scripted grasp as "
        "a stand-in VLA), --policy those of any policy(observation) -> chunk: a "
        "MODULE:FACTORY of yours or a LeRobot checkpoint folder. A policy that raises, hangs "
        "past --policy-timeout, or answers NaN or the wrong shape sends nothing and is "
        "counted by reason, here and in the runtime's status. A runtime on another machine: "
        "--server-key/--client-key (`kiwi keys`); its clock offset is measured and applied. "
        "The wire specification: docs/slow_process.md.",
        "kiwi slow --config configs/sim_grasp.yaml\n"
        "kiwi slow --config configs/sim_grasp.yaml --vla --set slow.latency_ms=300\n"
        "kiwi slow --policy my_pkg.policies:make_policy --policy-arg chunk=50 "
        "--set slow.latency_ms=0\n"
        "kiwi slow --policy lerobot:outputs/act/checkpoints/last/pretrained_model",
    )
    add_config_args(p, "sim_grasp", presets=False)
    p.add_argument(
        "--vla", action="store_true", help="attach action chunks (default policy: the scripted one)"
    )
    p.add_argument(
        "--policy",
        metavar="MODULE:FACTORY",
        help="the policy: a factory returning policy(observation) -> [T, 6] chunk, or "
        "lerobot:PATH for a LeRobot checkpoint folder (docs/slow_process.md)",
    )
    p.add_argument(
        "--policy-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword string for the factory (repeatable)",
    )
    p.add_argument(
        "--policy-timeout", type=float, default=2.0, help="seconds before a call is refused"
    )
    p.add_argument("--task", default="grasp the cube", help="the task string given to the policy")
    p.add_argument("--server-key", help="the runtime's public CURVE key (a remote runtime)")
    p.add_argument("--client-key", help="this client's .key_secret (`kiwi keys`)")
    p.add_argument(
        "--camera-clock",
        choices=["runtime", "local"],
        default="runtime",
        help="which machine stamps the camera frames (local: shifted by the measured offset)",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
