"""kiwi camera: a real camera (or a video file) on the camera socket, for `kiwi slow`."""

from __future__ import annotations

from pathlib import Path

from . import add_config_args, command


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT (e.g. 640x480)")
    return int(width), int(height)


def _joints(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--fixed-joints {text!r} is not comma-separated numbers") from None


def cmd_camera(args) -> int:
    import zmq

    from .. import link
    from ..camera_publisher import (
        CAMERA_HWM,
        CameraPublisher,
        TelemetryJoints,
        fixed_joints,
    )
    from ..cameras import CameraError, open_camera, parse_camera_spec, square
    from ..config import GraspJob, load_config
    from ..jsonout import dumps

    job, _ = load_config(args.config, GraspJob, args.overrides)
    spec = parse_camera_spec(args.camera)
    capture = _size(args.capture_size) if args.capture_size else None
    source = open_camera(spec, square(job.slow.image_size), args.fps, args.loop, capture)
    ctx = link.Context()
    telemetry = None
    try:
        curve = link.curve_keys(job.link.curve_secret, job.link.curve_clients)
        try:
            sock = ctx.bind(zmq.PUB, job.link.camera, curve, hwm=CAMERA_HWM)
        except zmq.ZMQError as e:
            raise CameraError(f"cannot bind the camera socket {job.link.camera}: {e}") from None
        if args.fixed_joints:
            joints_at, joints_from = fixed_joints(_joints(args.fixed_joints)), "fixed joints"
        else:
            keys = {}
            if args.server_key:
                keys = {
                    "server_public_key": Path(args.server_key),
                    "client_secret": Path(args.client_key) if args.client_key else None,
                }
            telemetry = TelemetryJoints(
                ctx, job.link.telemetry, 1.5 / job.runtime.telemetry_hz, **keys
            )
            joints_at, joints_from = telemetry, f"the runtime's telemetry on {job.link.telemetry}"
        publisher = CameraPublisher(source, sock, joints_at, spec.name)
        print(
            f"kiwi camera: {spec.name}={spec.source} at {source.fps:g} fps, "
            f"{job.slow.image_size}x{job.slow.image_size}, joints from {joints_from}; "
            f"publishing on {job.link.camera}. Ctrl-C stops.",
            flush=True,
        )
        try:
            stats = publisher.run(duration_s=args.duration, max_frames=args.frames)
        except KeyboardInterrupt:
            stats = publisher.stats
            stats.stopped = "interrupted"
    finally:
        source.close()
        if telemetry is not None:
            telemetry.close()
        ctx.close()
    summary = stats.summary()
    print(
        f"{stats.published} frames published of {stats.read} read ({stats.stopped}); dropped "
        f"{stats.dropped}: {stats.late} late, {stats.read_failures} read failures, "
        f"{stats.no_joints} without joints; {summary['fps_measured']:.1f} fps"
    )
    if stats.read and not stats.published and stats.no_joints:
        print(
            f"no frame had joints: is `kiwi run` publishing telemetry on {job.link.telemetry}? "
            "(or give --fixed-joints for a still arm)"
        )
    if args.json:
        print(dumps(summary))
    return 0


def register(sub) -> None:
    p = command(
        sub,
        "camera",
        cmd_camera,
        "publish a camera or a video file on the camera socket for `kiwi slow`",
        "Reads frames from a USB camera (OpenCV: pip install 'kiwi-runtime[camera]') or a video "
        "file (mp4 or GIF, played at its own rate), each with the arm's joints read at its "
        "capture, and publishes them on link.camera, the socket the simulated world uses, so "
        "`kiwi slow` runs unchanged. The joints come from the runtime's telemetry (link."
        "telemetry; run `kiwi run` beside it), or --fixed-joints for a still arm. Frames are "
        "cropped and resized to slow.image_size. `kiwi run --camera NAME=SOURCE` does the same "
        "inside the runtime, with the loop's own joint readings.",
        "kiwi camera wrist=/dev/video0 --fps 30 --capture-size 640x480\n"
        "kiwi camera wrist=replay.mp4 --loop --fixed-joints 0,-30,60,20,0,50",
    )
    p.add_argument("camera", metavar="NAME=SOURCE", help="wrist=0, wrist=/dev/video0, wrist=F.mp4")
    add_config_args(p, "sim_grasp", presets=False)
    p.add_argument("--fps", type=float, help="frames per second (default: the source's)")
    p.add_argument("--capture-size", metavar="WxH", help="resolution asked of a USB camera")
    p.add_argument("--loop", action="store_true", help="replay a video file from the start")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--frames", type=int, help="stop after this many frames")
    p.add_argument(
        "--fixed-joints",
        metavar="J1,...,J6",
        help="publish these joints with every frame (degrees; gripper 0..100) instead of the "
        "runtime's telemetry",
    )
    p.add_argument("--server-key", help="the runtime's public key, when telemetry uses CURVE")
    p.add_argument("--client-key", help="this client's .key_secret, when telemetry uses CURVE")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
