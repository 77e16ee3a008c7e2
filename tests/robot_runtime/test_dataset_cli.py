"""`kiwi collect --format lerobot`, `kiwi dataset info` and `kiwi dataset convert` on tiny data."""

from __future__ import annotations

import json

import numpy as np

from robot_runtime.cli import main
from world_model.config import ModelSpec
from world_model.datasets import SO_JOINT_NAMES, LeRobotReader
from world_model.replay import Replay, save_episode, save_spec


def kiwi(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_collect_lerobot_records_what_the_npz_collection_records(tmp_path, capsys):
    out = tmp_path / "lerobot"
    common = ["--env", "grasp", "--seed", "4", "--no-progress", "--image-size", "32"]
    assert kiwi("collect", "--format", "lerobot", "--episodes", 1, "--out", out, *common) == 0
    # the same command for two episodes resumes: seed 4 is there, only seed 5 is collected
    assert kiwi("collect", "--format", "lerobot", "--episodes", 2, "--out", out, *common) == 0
    assert "1 episode already there" in capsys.readouterr().out
    assert kiwi("collect", "--episodes", 1, "--out", tmp_path / "npz", *common) == 0
    replay = Replay(tmp_path / "npz").episodes[0]

    with LeRobotReader(out) as ds:
        assert ds.num_episodes == 2 and ds.fps == 50 and ds.robot_type == "so101_follower"
        assert ds.features["observation.state"]["names"] == list(SO_JOINT_NAMES)
        assert ds.features["action"]["names"] == list(SO_JOINT_NAMES)
        assert ds.video_keys == ["observation.images.wrist", "observation.images.front"]
        assert ds.features["observation.images.wrist"]["shape"] == [32, 32, 3]
        assert ds.tasks == ["pick up the red cube"]
        ep = ds.read_episode(0)
        seeds = [int(ds.read_episode(i, ["seed"])["seed"][0]) for i in range(2)]
    assert seeds == [4, 5]
    length = len(replay["action"]) - 1  # the last observation has no action
    assert ep.length == length and ep.task == "pick up the red cube"
    np.testing.assert_array_equal(ep["observation.state"], replay["state"][:-1])
    np.testing.assert_array_equal(ep["action"], replay["action"][:-1])
    np.testing.assert_array_equal(ep["next.success"], replay["is_success"][1:])
    np.testing.assert_array_equal(ep["next.reward"], replay["reward"][1:])
    assert ep["next.done"][-1] and not ep["next.done"][:-1].any()
    assert ep["observation.images.front"].shape == (length, 32, 32, 3)

    capsys.readouterr()
    assert kiwi("dataset", "info", out, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 2 and info["frames"] > 100 and info["fps"] == 50
    assert info["cameras"]["observation.images.wrist"]["codec"] in ("av1", "h264", "mpeg4")
    assert info["success"]["episodes"] == 2
    assert kiwi("dataset", "info", out) == 0
    text = capsys.readouterr().out
    assert "2 episodes" in text and "success (next.success on the last frame)" in text


def tiny_npz_folder(path, episodes=3, length=7):
    """Replay episodes made by hand: state, object, a 32x32 wrist camera, labels, seeds."""
    save_spec(
        path,
        ModelSpec(
            vector_dims={"state": 6, "object": 4},
            image_keys=("wrist",),
            action_dim=6,
            action_low=(-100.0,) * 6,
            action_high=(100.0,) * 6,
        ),
    )
    made = []
    for e in range(episodes):
        t = np.arange(length)
        image = np.zeros((length, 32, 32, 3), np.uint8)
        image[..., 0] = (30 + 20 * t)[:, None, None]
        image[:, 8:24, 8:24, 1] = 180
        episode = {
            "state": (t[:, None] + np.arange(6) * 10 + e).astype(np.float32),
            "object": np.full((length, 4), e, np.float32),
            "wrist": image,
            "action": (t[:, None] + np.arange(6) + 0.5).astype(np.float32),
            "reward": (t == length - 1).astype(np.float32) * (e % 2),
            "is_first": t == 0,
            "is_last": t == length - 1,
            "is_terminal": np.zeros(length, bool),
            "is_success": (t == length - 1) & (e % 2 == 1),
            "success": np.full(length, e % 2 == 1),
            "seed": np.full(length, 100 + e, np.int64),
        }
        episode["action"][-1] = 0
        save_episode(path, episode)
        made.append(episode)
    return made


def test_convert_moves_npz_episodes_into_the_format(tmp_path, capsys):
    made = tiny_npz_folder(tmp_path / "npz")
    assert kiwi("dataset", "convert", tmp_path / "npz", tmp_path / "out", "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 3 and summary["frames"] == 18 and summary["successes"] == 1
    by_seed = {int(m["seed"][0]): m for m in made}
    with LeRobotReader(tmp_path / "out") as ds:
        assert ds.video_keys == ["observation.images.wrist"]
        assert ds.features["observation.object"]["shape"] == [4]
        for i in range(3):
            ep = ds.read_episode(i)
            src = by_seed[int(ep["seed"][0])]
            np.testing.assert_array_equal(ep["observation.state"], src["state"][:-1])
            np.testing.assert_array_equal(ep["observation.object"], src["object"][:-1])
            np.testing.assert_array_equal(ep["action"], src["action"][:-1])
            np.testing.assert_array_equal(ep["next.reward"], src["reward"][1:])
            np.testing.assert_array_equal(ep["next.success"], src["is_success"][1:])
            error = np.abs(ep["observation.images.wrist"].astype(float) - src["wrist"][:-1]).mean()
            assert error < 3.0, error
    assert kiwi("dataset", "info", tmp_path / "out") == 0
    assert "1 of 3 (33.3%)" in capsys.readouterr().out


def test_bench_reads_every_frame_and_reports_frames_per_second(tmp_path, capsys):
    tiny_npz_folder(tmp_path / "npz")
    assert kiwi("dataset", "convert", tmp_path / "npz", tmp_path / "out") == 0
    capsys.readouterr()
    for extra in ([], ["--iterate"]):
        assert kiwi("dataset", "bench", tmp_path / "out", "--json", *extra) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["frames"] == 18 and result["frames_per_s"] > 0


def test_convert_with_png_images_is_exact(tmp_path):
    made = tiny_npz_folder(tmp_path / "npz", episodes=1)
    out = tmp_path / "out"
    assert kiwi("dataset", "convert", tmp_path / "npz", out, "--image-storage", "image") == 0
    with LeRobotReader(out) as ds:
        assert ds.image_keys == ["observation.images.wrist"] and not ds.video_keys
        np.testing.assert_array_equal(
            ds.read_episode(0)["observation.images.wrist"], made[0]["wrist"][:-1]
        )


def test_info_on_a_v21_folder_says_how_to_convert_it(tmp_path, capsys):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1"}))
    assert kiwi("dataset", "info", tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "convert_dataset_v21_to_v30" in err


def test_convert_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    tiny_npz_folder(tmp_path / "npz", episodes=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert kiwi("dataset", "convert", tmp_path / "npz", tmp_path / "out") == 2
    assert "not empty" in capsys.readouterr().err
