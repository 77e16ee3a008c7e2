"""kiwi dataset info / convert: LeRobotDataset v3.0 folders (world_model/datasets)."""

from __future__ import annotations

from pathlib import Path

from .. import jsonout
from ..textui import format_table
from . import command


def cmd_dataset_info(args) -> int:
    from world_model.datasets import LeRobotReader

    with LeRobotReader(Path(args.dir)) as ds:
        info = ds.describe()
        if "gate.p_success" in ds.features:  # recorded by `kiwi sim/run --record`
            info["gate"] = gate_decisions(ds)
    if args.json:
        print(jsonout.dumps(info))
        return 0
    length = info["episode_length"]
    print(
        f"{info['root']}: LeRobotDataset {info['codebase_version']}, robot "
        f"{info['robot_type'] or '-'}, {info['fps']} fps"
    )
    print(
        f"{info['episodes']} episodes, {info['frames']} frames ({info['duration_s']:.1f} s); "
        f"episode length {length['min']}..{length['max']} (mean {length['mean'] or 0:.1f})"
    )
    rows = [("feature", "dtype", "shape", "names")]
    for key, f in info["features"].items():
        names = f["names"]
        if isinstance(names, dict):  # lerobot writes {"motors": [...]} in places
            names = next(iter(names.values()), None)
        text = ", ".join(map(str, names)) if isinstance(names, list) else "-"
        if len(text) > 60:
            text = text[:57] + "..."
        rows.append((key, f["dtype"], "x".join(map(str, f["shape"])), text))
    print(format_table(rows))
    for key, cam in info["cameras"].items():
        h, w = cam["shape"][:2]
        how = f"{cam['codec']} video" if cam["storage"] == "video" else "PNG images in the parquet"
        print(f"camera {key}: {w}x{h}, {how}")
    for task, n in info["tasks"].items():
        print(f"task {task!r}: {n} episodes")
    success = info["success"]
    if success:
        print(
            f"success (next.success on the last frame): {success['succeeded']} of "
            f"{success['episodes']} ({success['rate']:.1%})"
        )
    else:
        print("success: not labelled (no next.success)")
    gate = info.get("gate")
    if gate:
        print(
            f"gate decisions (gate.p_success): {gate['decisions']} in {gate['episodes']} "
            f"episodes, {gate['commits']} commits; P mean {gate['p_mean']:.2f}"
            if gate["decisions"]
            else "gate decisions (gate.p_success): none"
        )
    files = info["files"]
    print(f"files: {files['data']} data, {files['video']} video, {files['size_mb']:.1f} MB")
    return 0


def gate_decisions(ds) -> dict:
    """The commit gate's decisions a `--record` dataset holds (``gate.p_success`` and
    ``gate.commit`` at decision frames, NaN elsewhere)."""
    import numpy as np

    ps, commits, episodes = [], 0, 0
    for i in range(ds.num_episodes):
        ep = ds.read_episode(i, ["gate.p_success", "gate.commit"])
        at = np.isfinite(ep["gate.p_success"])
        ps.extend(ep["gate.p_success"][at].tolist())
        commits += int(np.sum(ep["gate.commit"][at] == 1))
        episodes += bool(at.any())
    return {
        "decisions": len(ps),
        "episodes": episodes,
        "commits": commits,
        "p_mean": float(np.mean(ps)) if ps else None,
    }


def cmd_dataset_convert(args) -> int:
    from world_model.datasets.replay_to_lerobot import convert_replay_folder

    print(f"kiwi dataset convert: {args.npz_dir} -> {args.out} (LeRobotDataset v3.0)")
    summary = convert_replay_folder(
        Path(args.npz_dir),
        Path(args.out),
        task=args.task,
        robot_type=args.robot_type or None,
        fps=args.fps,
        camera_dtype=args.image_storage,
    )
    successes = summary["successes"]
    print(
        f"{summary['episodes']} episodes, {summary['frames']} frames"
        + (f", {successes} succeeded" if successes is not None else "")
        + (
            f"; {summary['skipped_one_step_episodes']} one-step episodes skipped"
            if summary["skipped_one_step_episodes"]
            else ""
        )
    )
    if args.json:
        print(jsonout.dumps(summary))
    return 0


def cmd_dataset_bench(args) -> int:
    import time

    from world_model.datasets import LeRobotReader

    with LeRobotReader(Path(args.dir)) as ds:
        episodes = range(min(args.episodes or ds.num_episodes, ds.num_episodes))
        keys = [k for k in ds.features if k not in ds.camera_keys] + ds.camera_keys
        t0 = time.perf_counter()
        frames = 0
        for i in episodes:
            if args.iterate:
                frames += sum(1 for _ in ds.iter_frames(i, keys))
            else:
                frames += ds.read_episode(i, keys).length
        wall = time.perf_counter() - t0
    result = {
        "episodes": len(episodes),
        "frames": frames,
        "cameras": ds.camera_keys,
        "wall_s": wall,
        "frames_per_s": frames / wall if wall > 0 else None,
        "camera_frames_per_s": frames * len(ds.camera_keys) / wall if wall > 0 else None,
        "mode": "iter_frames" if args.iterate else "read_episode",
    }
    print(
        f"read {frames} frames of {len(episodes)} episodes ({len(ds.camera_keys)} cameras "
        f"decoded) in {wall:.2f} s: {result['frames_per_s']:.0f} frames/s "
        f"({result['mode']}, one thread)"
    )
    if args.json:
        print(jsonout.dumps(result))
    return 0


CONVERT_DESCRIPTION = (
    "Writes every episode of NPZ_DIR (world_model/replay.py's format, with its "
    "spec.json) into a new LeRobotDataset folder OUT: `state` becomes observation.state "
    "(named by the SO-arm joints), other vectors observation.<key>, cameras (only if the "
    "episodes were collected with --cameras) observation.images.<key>; next.reward, "
    "next.done and next.success from the replay's rewards and labels. A replay episode of "
    "T steps gives T-1 frames (its last observation has no action)."
)


def register(sub) -> None:
    dataset = command(
        sub,
        "dataset",
        lambda args: dataset.print_help() or 0,
        "LeRobotDataset v3.0 folders: what one holds, and the project's episodes moved into one",
        "Reads and writes LeRobot's dataset format (v3.0: parquet frames, one mp4 per camera "
        "holding many episodes) without lerobot installed. `info` describes a folder; "
        "`convert` writes the project's .npz replay episodes as a new one.",
        "kiwi dataset info data/grasp-lerobot\nkiwi dataset convert data/grasp data/grasp-lerobot",
    )
    dataset_sub = dataset.add_subparsers(dest="dataset_command", metavar="ACTION")
    p = command(
        dataset_sub,
        "info",
        cmd_dataset_info,
        "what a LeRobotDataset folder holds",
        "Prints episodes, frames, fps, the robot type, every feature with its dtype and "
        "shape, the cameras (video codec or PNG), the tasks and, when the episodes are "
        "labelled with next.success, the success rate. A v2.1 folder gets the command that "
        "converts it.",
        "kiwi dataset info data/grasp-lerobot\nkiwi dataset info data/grasp-lerobot --json",
    )
    p.add_argument("dir", help="the dataset folder (holds meta/info.json)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p = command(
        dataset_sub,
        "bench",
        cmd_dataset_bench,
        "read throughput: frames/s with every camera decoded",
        "Reads every feature of the first N episodes (video decoded, PNG images decoded) "
        "and prints frames per second; --iterate goes frame by frame (iter_frames) instead "
        "of whole episodes (read_episode).",
        "kiwi dataset bench data/grasp-lerobot --json",
    )
    p.add_argument("dir", help="the dataset folder")
    p.add_argument("--episodes", type=int, default=None, help="read only the first N")
    p.add_argument("--iterate", action="store_true", help="frame by frame (iter_frames)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p = command(
        dataset_sub,
        "convert",
        cmd_dataset_convert,
        "the project's .npz episodes as a LeRobotDataset v3.0 folder",
        CONVERT_DESCRIPTION,
        "kiwi dataset convert data/grasp data/grasp-lerobot\n"
        "kiwi dataset convert data/grasp-img data/grasp-img-lerobot --image-storage image",
    )
    p.add_argument("npz_dir", help="folder of .npz episodes (from `kiwi collect`)")
    p.add_argument("out", help="new dataset folder (must be absent or empty)")
    p.add_argument("--task", default="pick up the red cube", help="the task string")
    p.add_argument("--robot-type", default="so101_follower", help="info.json's robot_type")
    p.add_argument("--fps", type=int, default=50, help="frames per second of the episodes")
    p.add_argument(
        "--image-storage",
        choices=["video", "image"],
        default="video",
        help="cameras as mp4 (AV1 when PyAV has it) or PNG in the parquet",
    )
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
