"""kiwi run: the service on a real arm (or on the servo emulator) through the drivers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_config_args, command


def cmd_run(args) -> int:
    import torch

    from ..config import GraspJob, load_config
    from ..recording import RecorderProcess

    job, path = load_config(args.config, GraspJob, args.overrides)
    torch.set_num_threads(job.runtime.threads)
    recorder = None
    if args.rerun:  # a process of its own, listening before the loop starts
        recorder = RecorderProcess(Path(args.rerun), job.link.telemetry, job.link.camera)
    try:
        return _run(args, job)
    finally:
        if recorder is not None and recorder.stop() == 0:
            print(f"recording: {args.rerun} (view it: rerun {args.rerun})", flush=True)


def _run(args, job) -> int:
    import threading
    import time

    from drivers.arm import ARMS, ServoArm
    from drivers.bus import BusSettings
    from drivers.ports import latency_warning

    from .. import link
    from ..config import dump_config
    from ..jsonout import dumps, write_json
    from ..liveline import LiveLine, RunStatusThread
    from ..policies import build_policy
    from ..robots import check_joints, choose_robot
    from ..service import load_world_model, serve

    robot = choose_robot(job.robot, args.robot, args.port, args.calibration)
    config = ARMS[robot.type]
    check_joints(job.robot, tuple(m.name for m in config.motors))
    out = Path(args.out or f"runs/run-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(job))
    warning = latency_warning(robot.port)
    if warning:
        print(warning)
    wm = load_world_model(job.runtime.checkpoint)
    faults = job.runtime.faults
    settings = BusSettings(timeout_s=faults.bus_timeout_ms / 1000, retries=faults.bus_retries)
    arm = ServoArm(config, robot.port, robot.calibration, settings)
    built = build_policy(job, args.controller)  # the same policy and gate as `kiwi sim`
    if built.note:
        print(built.note)
    camera = history = None
    camera_stop = threading.Event()
    if args.camera:
        from ..camera_publisher import JointHistory, start_camera_thread

        history = JointHistory(max_gap_s=2.0 / job.runtime.rate_hz)
        curve = link.curve_keys(job.link.curve_secret, job.link.curve_clients)
        camera = start_camera_thread(
            args.camera,
            job.link.camera,
            history,
            camera_stop,
            image_size=job.slow.image_size,
            loop=True,
            curve=curve,
        )
    recorder, record_ctx = None, None
    if args.record:
        recorder, record_ctx = _recorder(args, job, robot.type, len(config.motors))
    gate = "gated" if built.gate is not None else "not gated"
    print(
        f"kiwi run: {robot.type} on {robot.port} (calibration {robot.calibration}), "
        f"{args.controller} controller ({gate if args.controller == 'grasp' else 'VLA chunks'}) "
        f"at {job.runtime.rate_hz:g} Hz -> {out}",
        flush=True,
    )
    print(
        f"endpoints: observations {job.link.obs}, queries {job.link.query} (kiwi grasp-check "
        f"--connect {job.link.query}), telemetry {job.link.telemetry}"
        + (f", camera {job.link.camera} ({args.camera})" if camera else "")
        + f". Ctrl-C stops (torque {'off' if job.runtime.torque_off_on_exit else 'held'}).",
        flush=True,
    )
    watchers = []

    def ready(runtime) -> None:
        """The loop is about to start: the status line runs beside it."""
        if history is not None:
            runtime.on_joints = history.add
        print("ready", flush=True)
        live = args.live if args.live is not None else sys.stdout.isatty()
        watchers.append(
            RunStatusThread(runtime.status, job.link.obs, LiveLine() if live else None).start()
        )

    try:
        result = serve(job, wm, arm, built.policy, args.duration, ready=ready, recorder=recorder)
    finally:
        for watcher in watchers:
            watcher.stop()
        record = recorder.close() if recorder is not None else None
        if record_ctx is not None:
            record_ctx.close()
        if camera is not None:
            stats = camera.stop()
            camera_summary = {**stats.summary(), "error": camera.error}
    if camera is not None:
        result["camera"] = camera_summary
    if record is not None:
        result["record"] = record
        print(
            f"recorded {record['episodes_written']} episode(s) into {record['dir']} "
            f"(kiwi dataset info {record['dir']})"
            + (f"; not written: {record['error']}" if record["error"] else "")
        )
    result["robot"] = {
        "type": robot.type,
        "port": robot.port,
        "calibration": str(robot.calibration),
    }
    write_json(out / "summary.json", result, indent=2)
    loop, bus = result["loop"], result["bus"]
    decisions = result["decisions"]
    print(
        f"stopped after {loop['ticks']} ticks ({result['stop_reason']}): jitter p50/p99 "
        f"{loop['jitter_us_p50']:.0f}/{loop['jitter_us_p99']:.0f} µs, {loop['overruns']} "
        f"overruns; observations applied {result['estimator']['applied']}, rejected "
        f"{result['rejected']}; bus: {bus.get('retries', 0)} retries, "
        f"{bus.get('timeouts', 0)} timeouts, {bus.get('corrupt', 0)} corrupt replies, "
        f"{bus['health']['failed']} cycles held"
    )
    if decisions:
        print(
            "gate: "
            + ", ".join(f"P={d['p_success']:.2f} {d['verdict']}" for d in decisions)
            + f"; final phase {result['phase']}"
        )
    print(f"run folder: {out} (summary.json, config.yaml)")
    if args.json:
        print(dumps(result))
    if result["fault"]:
        print(f"the arm was stopped: {result['fault']}")
        return 1
    return 0


LEROBOT_ROBOT_TYPES = {
    "so100": "so100_follower",
    "so101": "so101_follower",
    "koch": "koch_follower",
}


def _recorder(args, job, robot_type: str, n_joints: int):
    """The `--record` recorder of `kiwi run`, and the ZeroMQ context of its camera tap (None
    without a camera). The camera is recorded when its socket is on loopback (a CURVE-secured
    one would need client keys this process does not hold)."""
    from .. import link
    from ..attempt_recording import GRASP_TASK, AttemptRecorder

    cameras, address, ctx = {}, None, None
    if args.camera:
        name = args.camera.split("=", 1)[0]
        if link.is_loopback(job.link.camera):
            size = job.slow.image_size
            cameras, address, ctx = {name: (size, size)}, job.link.camera, link.Context()
        else:
            print(f"--record: camera {name} not recorded ({job.link.camera} is not loopback)")
    task = args.task or (GRASP_TASK if args.controller == "grasp" else "follow the VLA's chunks")
    recorder = AttemptRecorder(
        Path(args.record),
        int(round(job.runtime.rate_hz)),
        n_joints,
        task=task,
        robot_type=LEROBOT_ROBOT_TYPES.get(robot_type, robot_type),
        cameras=cameras,
        camera_address=address,
        ctx=ctx,
    )
    return recorder, ctx


def cmd_grasp_check(args) -> int:
    if args.connect:
        return _grasp_check_remote(args)
    import torch

    from world_model.grasp import load_grasp_predictor

    from ..assets import resolve
    from ..config import GraspJob, load_config
    from ..grasp_check import check_grasp
    from ..grasp_eval import runtime_condition

    torch.set_num_threads(1)
    job, _ = load_config(args.config, GraspJob, args.overrides)
    path = resolve(args.checkpoint or job.runtime.checkpoint)
    wm, predictor, head_now, calibration_now = load_grasp_predictor(path, args.samples)
    offset = (args.offset_mm / 1000.0, args.offset_across_mm / 1000.0)
    check = check_grasp(
        job,
        wm,
        predictor,
        head_now,
        calibration_now,
        runtime_condition(job),
        args.seed,
        offset,
        args.execute,
    )
    if check is None:
        print("the arm never reached the decision (no observation of the cube?)")
        return 1
    verdict = "COMMIT" if check.p_success >= job.gate.threshold else "BACK OFF"
    print(
        f"cube seed {args.seed}, aim offset {args.offset_mm:g} mm along / "
        f"{args.offset_across_mm:g} mm across the closing axis"
    )
    print(
        f"P(success) = {check.p_success:.2f} ± {check.spread:.2f} (K={check.samples} rollouts "
        f"of H={check.horizon} ticks, {check.ms:.1f} ms); no-rollout classifier "
        f"{check.p_no_rollout:.2f}; the belief's cube estimate is "
        f"{check.estimate_error_mm:.1f} mm off -> {verdict} (threshold {job.gate.threshold})"
    )
    if check.executed is not None:
        print(
            f"executed: the grasp {'SUCCEEDED' if check.executed['success'] else 'FAILED'} "
            f"(final phase {check.executed['phase']})"
        )
    return 0


def _grasp_check_remote(args) -> int:
    import zmq

    from .. import link

    ctx = link.Context()
    try:
        sock = ctx.connect(zmq.REQ, args.connect)
        sock.send_multipart(link.encode("grasp_query"))
        if not sock.poll(int(args.timeout * 1000)):
            raise OSError(
                f"no answer from {args.connect} in {args.timeout:g} s (is `kiwi sim` "
                "or `kiwi run` running there?)"
            )
        reply = link.decode(sock.recv_multipart())
    finally:
        ctx.close()
    if reply.kind == "error":
        print(f"the runtime says: {reply.header.meta.get('error')}")
        return 1
    m = reply.header.meta
    print(
        f"P(success) = {m['p_success']:.2f} ± {m['spread']:.2f} (K={m['samples']}, "
        f"H={m['horizon']}, {m['ms']:.1f} ms); phase {m['phase']}, threshold {m['threshold']}"
    )
    return 0


def register(sub) -> None:
    p = command(
        sub,
        "run",
        cmd_run,
        "the runtime on a real arm (or the servo emulator)",
        "The service of `kiwi sim` on an SO-100/SO-101 (Feetech) or Koch (Dynamixel) arm "
        "through the serial drivers: the latent estimator corrected by the slow process's "
        "observations, the grasp state machine with its commit gate (or a VLA's action "
        "chunks), joint limits from the calibration, a step clamp, the staleness watchdog, "
        "a flaky bus absorbed until it is not. Writes a run folder with summary.json. The "
        "port may be one that `kiwi emulate-bus` made.",
        "kiwi run --config configs/so101.yaml --calibration so101.json\n"
        "kiwi run --robot so101 --port /dev/ttyACM0 --calibration so101.json --camera wrist=0\n"
        "kiwi emulate-bus --robot so101 --link /tmp/so101 --sweep &\n"
        "kiwi calibrate --robot so101 --port /tmp/so101 --out so101.json --yes\n"
        "kiwi run --robot so101 --port /tmp/so101 --calibration so101.json --duration 30\n"
        "kiwi run --config configs/so101.yaml --camera wrist=0 --record data/my-runs",
    )
    p.add_argument(
        "--robot", choices=["so100", "so101", "koch"], help="the arm (default: the config's)"
    )
    p.add_argument("--port", help="its serial port (default: the config's)")
    p.add_argument(
        "--calibration",
        help="LeRobot-layout calibration JSON (default: the config's, else LeRobot's own file "
        "for robot.id under ~/.cache/huggingface/lerobot/calibration)",
    )
    add_config_args(p, "sim_grasp", presets=False)
    p.add_argument(
        "--controller",
        choices=["grasp", "chunk"],
        default="grasp",
        help="the grasp state machine with its commit gate (what `kiwi sim` runs), or a "
        "VLA's action chunks",
    )
    p.add_argument(
        "--camera",
        metavar="NAME=SOURCE",
        help="publish a camera for `kiwi slow` with the joints at capture: wrist=0, "
        "wrist=/dev/video0 or wrist=clip.mp4 (a video file plays at its own rate, looping)",
    )
    p.add_argument("--out", help="run folder (default: runs/run-<date>-<time>)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print the final figures as JSON")
    p.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a status line rewritten twice a second: phase, observations, bus retries, "
        "timeouts, corrupt replies and held cycles (default: when stdout is a terminal)",
    )
    p.add_argument(
        "--rerun",
        metavar="FILE.rrd",
        help="record the run for Rerun's viewer (joints, the cube as estimated and seen, "
        "phases, gate, loop timing; needs rerun-sdk)",
    )
    p.add_argument(
        "--record",
        metavar="DIR",
        help="write the attempt as an episode of a LeRobotDataset v3.0 folder (created, or "
        "appended to): joints read, targets commanded, the --camera's frames, the gate's "
        "P(success) at each decision; next.success when the gripper holds something at the "
        "end (closed but blocked open)",
    )
    p.add_argument("--task", help="--record: the task string (default: the grasp's)")

    p = command(
        sub,
        "grasp-check",
        cmd_grasp_check,
        "will this grasp succeed? a forecast now",
        "In the simulator (held-out cube placements), runs the runtime's grasp to its "
        "decision and prints the forecast: P(success) from K rollouts of the commit plan, "
        "their spread, the time taken and the no-rollout classifier's answer; --execute "
        "then commits and prints what happened. --connect asks a running runtime "
        "(`kiwi sim`, `kiwi run`) over its query socket instead.",
        "kiwi grasp-check --seed 200001\n"
        "kiwi grasp-check --seed 200001 --offset-mm 12 --execute\n"
        "kiwi grasp-check --connect tcp://127.0.0.1:5602",
    )
    p.add_argument("--seed", type=int, default=200_000, help="cube placement")
    p.add_argument(
        "--offset-mm",
        type=float,
        default=0.0,
        help="shift the aim along the closing axis (a deliberate misalignment)",
    )
    p.add_argument("--offset-across-mm", type=float, default=0.0, help="... and across it")
    p.add_argument("--execute", action="store_true", help="commit and report the outcome")
    p.add_argument("--samples", type=int, help="K rollouts (default: the model's)")
    p.add_argument("--checkpoint", help="model with a success head (default: the shipped one)")
    add_config_args(p, "sim_grasp", presets=False)
    p.add_argument("--connect", help="query a running runtime at this address instead")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait with --connect")
