"""kiwi run: the service on a real arm (or on the servo emulator) through the drivers."""

from __future__ import annotations

import json

from . import command


def cmd_run(args) -> int:
    import torch

    from drivers.arm import ARMS, ServoArm
    from drivers.ports import latency_warning

    from ..config import GraspJob, load_config
    from ..controllers import ChunkPolicy, GraspController, GraspPolicy
    from ..service import load_world_model, serve

    job, path = load_config(args.config, GraspJob, args.overrides)
    torch.set_num_threads(job.runtime.threads)
    warning = latency_warning(args.port)
    if warning:
        print(warning)
    wm = load_world_model(job.runtime.checkpoint)
    arm = ServoArm(ARMS[args.robot], args.port, args.calibration)
    policy = (
        ChunkPolicy(1.0 / job.runtime.rate_hz)
        if args.controller == "chunk"
        else GraspPolicy(GraspController(job.controller))
    )
    print(
        f"kiwi run: {args.robot} on {args.port}, {args.controller} controller at "
        f"{job.runtime.rate_hz:g} Hz; observations on {job.link.obs}, queries on "
        f"{job.link.query}, telemetry on {job.link.telemetry}. Ctrl-C stops (torque "
        f"{'off' if job.runtime.torque_off_on_exit else 'held'}).",
        flush=True,
    )
    result = serve(job, wm, arm, policy, args.duration, ready=lambda rt: print("ready", flush=True))
    loop = result["loop"]
    print(
        f"stopped after {loop['ticks']} ticks: jitter p50/p99 {loop['jitter_us_p50']:.0f}/"
        f"{loop['jitter_us_p99']:.0f} µs, {loop['overruns']} overruns; observations applied "
        f"{result['estimator']['applied']}, malformed {result['rejected']}"
    )
    if args.json:
        print(json.dumps(result))
    return 0


def register(sub) -> None:
    p = command(
        sub,
        "run",
        cmd_run,
        "the runtime on a real arm (or the servo emulator)",
        "Runs the fast loop on an SO-100/SO-101 (Feetech) or Koch (Dynamixel) arm through "
        "the serial drivers: the latent estimator corrected by the slow process's "
        "observations, a controller (VLA action chunks by default, or the grasp state "
        "machine), joint limits from the calibration, a step clamp and the staleness "
        "watchdog. The port may be one that `kiwi emulate-bus` made.",
        "kiwi run --robot so100 --port /dev/ttyACM0 --calibration so100.json\n"
        "kiwi emulate-bus --protocol feetech --link /tmp/so100 &\n"
        "kiwi run --robot so100 --port /tmp/so100 --calibration so100.json --duration 30",
    )
    p.add_argument("--robot", choices=["so100", "so101", "koch"], required=True)
    p.add_argument("--port", required=True)
    p.add_argument("--calibration", required=True, help="LeRobot-layout calibration JSON")
    p.add_argument("--config", default="sim_grasp", help="job config (runtime, safety, link)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable)",
    )
    p.add_argument(
        "--controller",
        choices=["chunk", "grasp"],
        default="chunk",
        help="follow VLA action chunks, or run the grasp state machine",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print the final figures as JSON")
