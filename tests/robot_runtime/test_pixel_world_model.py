"""The world model from pixels and joints on LeRobot folders written by the project's writer:
the decoded-frame cache, `kiwi train world-model --data DIR` and `kiwi eval world-model`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robot_runtime.cli import main
from robot_runtime.config import LeRobotJob, load_config
from robot_runtime.dataset_world_model import resolve_job, split_episodes
from world_model.datasets import DatasetError, LeRobotReader
from world_model.datasets.frame_cache import load_or_build, replay_episode

from .pixel_dataset import episode_frames, write_dataset

CAMERAS = ["observation.images.wrist", "observation.images.front"]
VIDEO_MEAN_ABS_ERROR = 4.0  # AV1 on the synthetic squares; PNG and the resize are exact-ish


def kiwi(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("pixels") / "ds", episodes=22, length=24)


def test_the_cache_is_decoded_once_and_reused(dataset, tmp_path):
    logs: list[str] = []
    with LeRobotReader(dataset) as reader:
        first = load_or_build(reader, [0, 2], ["observation.state"], CAMERAS, tmp_path, 64, False)
        files = {p: p.stat().st_mtime_ns for p in first.folder.iterdir()}
        again = load_or_build(reader, [0, 2], ["observation.state"], CAMERAS, tmp_path, 64, False)
        assert first.built_s is not None and again.built_s is None
        assert again.folder == first.folder
        assert {p: p.stat().st_mtime_ns for p in again.folder.iterdir()} == files
        truth = reader.read_episode(2)
        other = load_or_build(
            reader, [0, 1], ["observation.state"], CAMERAS, tmp_path, 64, False, logs.append
        )
    assert other.built_s is not None and other.folder != first.folder
    assert not first.folder.exists() and any("removed the cache" in line for line in logs)
    ep = again.episodes[1]
    assert isinstance(ep["observation.images.wrist"], np.memmap)
    assert ep["observation.images.wrist"].shape == (24, 64, 64, 3)
    assert ep["observation.images.front"].shape == (24, 64, 64, 3)  # 48x64 resized to 64x64
    np.testing.assert_array_equal(ep["observation.state"], truth["observation.state"])
    np.testing.assert_array_equal(ep["action"], truth["action"])
    error = np.abs(ep["observation.images.wrist"].astype(float) - truth[CAMERAS[0]]).mean()
    assert error < VIDEO_MEAN_ABS_ERROR
    assert ep["is_first"][0] and ep["is_last"][-1] and not ep["is_terminal"].any()
    assert not list(tmp_path.glob(".*"))  # no temporary build folder left


def test_lerobot_frames_follow_the_replays_convention():
    frames = episode_frames(0, 5)
    frames["next.reward"] = np.array([0, 0, 1, 0, 2], np.float32)
    ep = replay_episode(frames)
    # the replay's reward[t] is received on arriving at frame t: LeRobot's next.reward[t - 1]
    np.testing.assert_array_equal(ep["reward"], [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(ep["action"], frames["action"])


def test_the_split_and_keys_come_from_config_and_dataset(dataset):
    job, _ = load_config("so101_pixels", LeRobotJob, preset="quick")
    train, held = split_episodes(25, job)
    assert held == [9, 19] and len(train) == 23 and not set(train) & set(held)
    with LeRobotReader(dataset) as reader:
        resolved = resolve_job(job, reader)
    assert resolved.model.cnn_keys == tuple(CAMERAS) == resolved.data.cameras
    assert resolved.model.mlp_keys == ("observation.state",)
    one, _ = load_config(
        "so101_pixels",
        LeRobotJob,
        ["data.cameras=[observation.images.front]"],
        preset="quick",
    )
    assert one.model.cnn_keys == ("observation.images.front",)


def test_train_quick_then_resume_reuses_the_cache_then_eval_writes_the_lab(
    dataset, tmp_path, capsys
):
    out = tmp_path / "run"
    common = ["--config", "so101_pixels", "--quick", "--data", dataset, "--no-progress"]
    assert kiwi("train", "world-model", *common, "--out", out) == 0
    first = capsys.readouterr().out
    assert "decoded 480 frames of 20 episodes" in first and "2 held out" in first
    config = (out / "config.yaml").read_text()
    assert "observation.images.front" in config and "task: lerobot" in config
    assert kiwi("train", "world-model", *common, "--out", out, "--resume", "--steps", 6) == 0
    second = capsys.readouterr().out
    assert "reusing the decoded cache" in second and "trained to step 6" in second

    ev = tmp_path / "eval"
    ckpt = out / "checkpoint.safetensors"
    args = ["eval", "world-model", "--data", dataset, "--checkpoint", ckpt, "--out", ev]
    assert kiwi(*args, "--no-progress") == 0
    for name in ("recon.png", "imagination.png", "horizon.png"):
        assert (ev / name).stat().st_size > 10_000, name
    report = json.loads((ev / "report.json").read_text())
    assert set(report["nmse_open_loop"]) == set(report["nmse_persistence"]) == {"1", "5"}
    assert set(report["image_mse_open_loop"]) == set(CAMERAS)
    assert all(v >= 0 for v in report["image_mse_persistence"][CAMERAS[0]].values())
    assert report["holdout_episodes"] == [9, 19] and report["state_key"] == "observation.state"
    capsys.readouterr()
    assert kiwi(*args, "--no-progress") == 2  # never silently overwritten
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "state, cameras, words",
    [(False, True, "has no observation.state"), (True, False, "has no cameras")],
)
def test_a_dataset_without_state_or_cameras_is_one_line(tmp_path, capsys, state, cameras, words):
    data = write_dataset(tmp_path / "ds", episodes=2, length=6, state=state, cameras=cameras)
    code = kiwi(
        "train", "world-model", "--config", "so101_pixels", "--quick",
        "--data", data, "--out", tmp_path / "run", "--no-progress",
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and "\n" not in err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_a_lerobot_folder_with_an_npz_job_says_which_config(dataset, tmp_path, capsys):
    code = kiwi(
        "train", "world-model", "--config", "sim_grasp", "--quick",
        "--data", dataset, "--out", tmp_path / "run", "--no-progress",
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "so101_pixels.yaml" in err and "\n" not in err


def test_resolve_refuses_a_camera_the_dataset_lacks(dataset):
    job, _ = load_config(
        "so101_pixels", LeRobotJob, ["data.cameras=[observation.images.top]"], preset="quick"
    )
    with LeRobotReader(dataset) as reader, pytest.raises(DatasetError, match="images.top"):
        resolve_job(job, reader)


def test_bench_pixel_figures_on_a_tiny_dataset(dataset):
    from robot_runtime.bench.pixels import CAMERAS as BENCH_CAMERAS
    from robot_runtime.bench.pixels import (
        pixel_model,
        time_dataset_read,
        time_posterior,
        time_prior,
    )

    wm = pixel_model(BENCH_CAMERAS[:1])
    assert wm.config.cnn_keys == BENCH_CAMERAS[:1]
    p50, p99 = time_posterior(wm, 3)
    prior50, _ = time_prior(wm, 3)
    assert 0 < p50 <= p99 and prior50 > 0
    read = time_dataset_read(dataset, 3)
    assert read["read_frames"] == 3 * 24 and read["read_cameras"] == 2
    assert read["camera_frames_per_s"] == pytest.approx(2 * read["read_frames_per_s"])


def test_close_frame_is_where_the_gripper_command_starts_to_fall():
    from robot_runtime.dataset_grasp import close_frame

    action = np.zeros((10, 6), np.float32)
    action[:, 5] = [90, 100, 100, 98, 97, 60, 20, 0, 0, 0]  # a 3-unit dip is not a close
    assert close_frame(action, 5) == 5
    action[:, 5] = 100
    assert close_frame(action, 5) is None


def test_train_and_eval_grasp_on_a_labelled_dataset(dataset, tmp_path, capsys):
    data = dataset
    common = ["--no-progress"]
    assert kiwi(
        "train", "world-model", "--config", "so101_pixels", "--quick", "--data", data,
        "--out", tmp_path / "wm", *common,
    ) == 0  # fmt: skip
    grasp = tmp_path / "grasp"
    assert kiwi(
        "train", "grasp", "--data", data, "--init", tmp_path / "wm" / "checkpoint.safetensors",
        "--out", grasp, *common,
    ) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "starts to close" in out and "calibration set" in out
    report = tmp_path / "eval.json"
    assert kiwi(
        "eval", "grasp", "--data", data, "--checkpoint", grasp / "grasp_model.safetensors",
        "--json", report, "--plot", tmp_path / "reliability.png", *common,
    ) == 0  # fmt: skip
    summary = json.loads(report.read_text())
    assert {"auroc", "brier", "ece", "episodes"} <= set(summary)
    assert summary["episodes"] == 2 and "held out" in summary["which_episodes"]  # 9 and 19
    assert (tmp_path / "reliability.png").stat().st_size > 10_000


def test_grasp_on_a_dataset_without_success_labels_is_one_line(dataset, tmp_path, capsys):
    from robot_runtime.dataset_grasp import labelled_episodes

    job, _ = load_config("so101_pixels", LeRobotJob, preset="quick")
    with LeRobotReader(dataset) as reader:
        reader.features = {k: v for k, v in reader.features.items() if k != "next.success"}
        with pytest.raises(DatasetError, match="no next.success labels"):
            labelled_episodes(reader, resolve_job(job, reader), [0], tmp_path, False, print)


def test_heads_fitted_with_another_horizon_are_scored_on_their_own(dataset, tmp_path, monkeypatch):
    """`kiwi train grasp --data --set gate.horizon=2` on a world model whose job says 4: the file
    carries 2 and `kiwi eval grasp --data` rolls 2 frames (it once rolled the job's 4)."""
    from safetensors import safe_open

    import robot_runtime.dataset_grasp as dataset_grasp

    assert kiwi(
        "train", "world-model", "--config", "so101_pixels", "--quick", "--data", dataset,
        "--out", tmp_path / "wm", "--no-progress",
    ) == 0  # fmt: skip
    grasp = tmp_path / "grasp" / "grasp_model.safetensors"
    assert kiwi(
        "train", "grasp", "--data", dataset, "--init", tmp_path / "wm" / "checkpoint.safetensors",
        "--out", grasp.parent, "--set", "gate.horizon=2", "--no-progress",
    ) == 0  # fmt: skip
    with safe_open(grasp, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["grasp"])["horizon"] == 2
    assert json.loads(meta["job_config"])["gate"]["horizon"] == 2
    horizons = []
    real = dataset_grasp.build_decisions

    def spy(wm, episodes, horizon, *args, **kw):
        horizons.append(horizon)
        return real(wm, episodes, horizon, *args, **kw)

    monkeypatch.setattr(dataset_grasp, "build_decisions", spy)
    assert kiwi(
        "eval", "grasp", "--data", dataset, "--checkpoint", grasp, "--plot",
        tmp_path / "r.png", "--no-progress",
    ) == 0  # fmt: skip
    assert horizons == [2]


def test_an_override_on_a_job_without_a_gate_section_keeps_the_jobs_gate_defaults():
    """A world model trained before `gate` was in its job: `--set gate.horizon=5` must not turn
    the rest of the section into the simulator gate's defaults (obs_every 10, closed-loop
    calibration): that once halved the pixel grasp curve's AUROC."""
    from pathlib import Path

    from robot_runtime.dataset_lab import job_of

    full, _ = load_config("so101_pixels", LeRobotJob)
    raw = full.model_dump(mode="json")
    del raw["gate"]
    plain = job_of({"job_config": raw}, Path("old.safetensors"))
    job = job_of({"job_config": raw}, Path("old.safetensors"), ["gate.horizon=5"])
    assert job.gate.horizon == 5
    assert job.gate.model_dump(exclude={"horizon"}) == plain.gate.model_dump(exclude={"horizon"})
    assert job.gate.obs_every == LeRobotJob.model_fields["gate"].default.obs_every == 1


def test_a_lerobot_dataset_trains_on_the_device_asked_and_refuses_several_processes(
    dataset, tmp_path, capsys, monkeypatch
):
    """--device reaches the trainer (it was ignored on this path); --nproc 2 is refused before
    torchrun is launched: two ranks would have written one folder."""
    import robot_runtime.commands.learning as learning

    launched = []
    monkeypatch.setattr(learning, "launch_torchrun", lambda args: launched.append(args) or 0)
    out = tmp_path / "wm"
    common = ["--config", "so101_pixels", "--quick", "--data", dataset, "--no-progress"]
    assert kiwi("train", "world-model", *common, "--out", out, "--nproc", 2) == 2
    assert "trains in one process for now" in capsys.readouterr().err
    assert not launched and not out.exists()
    assert kiwi("train", "world-model", *common, "--out", out, "--device", "cpu") == 0
    assert "on cpu" in capsys.readouterr().out
