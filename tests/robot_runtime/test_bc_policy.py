"""`kiwi train policy` / `kiwi eval policy` and the chunk policy's callable contract, on tiny
LeRobot folders written by the project's writer (video and image cameras) and real MuJoCo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robot_runtime.bc_data import load_demonstrations, resize_image
from robot_runtime.bc_policy import BCPolicy, load, load_policy
from robot_runtime.cli import main
from world_model.bc_net import random_shift
from world_model.checkpoint import save_tensors
from world_model.datasets import SO_JOINT_NAMES, LeRobotWriter
from world_model.errors import CheckpointError

FPS = 50
LENGTH = 12


def features(success: bool = True, front: bool = True) -> dict:
    joints = {"dtype": "float32", "shape": [6], "names": list(SO_JOINT_NAMES)}
    out = {
        "observation.state": joints,
        "action": dict(joints),
        "observation.images.wrist": {"dtype": "video", "shape": [64, 64, 3]},
    }
    if front:
        out["observation.images.front"] = {"dtype": "image", "shape": [48, 64, 3]}
    if success:
        out["next.success"] = {"dtype": "bool", "shape": [1]}
    return out


def episode(index: int, succeeded: bool, feats: dict) -> dict[str, np.ndarray]:
    """Joints in degrees ramping with time, the gripper 0..100; the action leads the state."""
    t = np.arange(LENGTH, dtype=np.float32)
    state = np.stack([10.0 * index + t, -t, 2 * t, 80 + 0 * t, t, 100 - 8 * t], axis=1)
    frames = {
        "observation.state": state.astype(np.float32),
        "action": (state + 1).astype(np.float32),
        "observation.images.wrist": np.full((LENGTH, 64, 64, 3), 40 * index, np.uint8),
    }
    frames["observation.images.wrist"][:, 20:30, 20 + index : 30 + index, 0] = 220
    if "observation.images.front" in feats:
        frames["observation.images.front"] = np.full((LENGTH, 48, 64, 3), 90, np.uint8)
    if "next.success" in feats:
        frames["next.success"] = np.zeros(LENGTH, bool)
        frames["next.success"][-3:] = succeeded
    return frames


def write_dataset(root, outcomes=(True, False, True), **kw):
    feats = features(**kw)
    writer = LeRobotWriter.create(root, FPS, feats, "so101_follower")
    for i, ok in enumerate(outcomes):
        writer.add_episode(episode(i, ok, feats), "pick up the cube")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("lerobot") / "grasps")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "policy"
    argv = ["train", "policy", "--quick", "--data", dataset, "--out", out, "--no-progress"]
    argv += ["--set", "policy.cameras=[wrist, front]"]
    assert main([str(a) for a in argv]) == 0
    return out / "policy.safetensors"


def observation(policy: BCPolicy, size: int = 64) -> dict:
    obs = {
        "observation.state": np.array([0, -5, 10, 80, 3, 60], np.float32),
        "task": "pick up the cube",
        "timestamp": 12.5,
    }
    for cam in policy.cameras:
        obs[f"observation.images.{cam}"] = np.zeros((size, size, 3), np.uint8)
    return obs


def test_quick_training_writes_a_policy_that_keeps_the_contract(trained):
    policy = load(str(trained))
    assert policy.cameras == ("wrist", "front")
    assert policy.dt == pytest.approx(1 / FPS)
    chunk = policy(observation(policy))
    assert chunk is not None
    assert chunk.dtype == np.float32 and chunk.shape == (policy.chunk, 6) == (5, 6)
    assert np.isfinite(chunk).all()
    meta = policy.meta
    assert meta["made_by"].startswith("kiwi train policy --quick")
    assert meta["episodes"] == 2 and meta["successful_only"] is True  # episode 1 failed
    metrics = [json.loads(line) for line in (trained.parent / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [3, 6] and metrics[-1]["val_l1"] is not None


def test_the_chunk_is_in_the_datasets_units(trained):
    """With the network's last layer zeroed it predicts the normalised mean: the chunk must then
    be the dataset's mean action from stats.json, in degrees and 0..100, on every row."""
    policy = load(str(trained))
    last = policy.net.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    chunk = policy(observation(policy))
    assert chunk is not None
    np.testing.assert_allclose(chunk, np.tile(policy.norm["action_mean"], (5, 1)), rtol=1e-6)
    with torch.no_grad():  # a gripper asked past its range is clipped to 0..100
        last.bias[5::6] = 10.0
    chunk = policy(observation(policy))
    assert chunk is not None and (chunk[:, 5] == 100.0).all()
    # the mean of the writer's stats over all three episodes: actions are state + 1
    t = np.arange(LENGTH)
    gripper_mean = (100 - 8 * t + 1).mean()
    assert policy.norm["action_mean"][5] == pytest.approx(gripper_mean, rel=1e-5)
    assert policy.norm["action_mean"][0] == pytest.approx(10.0 + t.mean() + 1, rel=1e-5)


def test_observation_checks(trained):
    policy = load(str(trained))
    big = observation(policy, size=128)  # `kiwi sim` sends 128 x 128: resized, same answer
    small = observation(policy)
    np.testing.assert_array_equal(policy(big), policy(small))
    del small["observation.images.front"]
    assert policy(small) is None  # a camera it needs is absent: nothing to act on
    bad = observation(policy)
    bad["observation.state"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="observation.state must be 6 numbers"):
        policy(bad)
    bad = observation(policy)
    bad["observation.state"] = np.full(6, np.nan, np.float32)
    with pytest.raises(ValueError, match="not finite"):
        policy(bad)
    bad = observation(policy)
    bad["observation.images.wrist"] = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        policy(bad)


def test_checkpoint_round_trip_and_refusals(trained, tmp_path, capsys):
    a, b = load(str(trained)), load_policy(trained)
    for name, value in a.net.state_dict().items():
        assert torch.equal(value, b.net.state_dict()[name])
    obs = observation(a)
    np.testing.assert_array_equal(a(obs), b(obs))
    # a damaged file is refused by its SHA-256, in one line
    damaged = tmp_path / "damaged.safetensors"
    data = bytearray(trained.read_bytes())
    data[-5] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load(str(damaged))
    # another kind of checkpoint is named as such
    other = tmp_path / "other.safetensors"
    save_tensors(other, {"model": {"w": torch.zeros(2)}}, {"step": 1})
    with pytest.raises(CheckpointError, match="not a chunk policy"):
        load(str(other))
    # the same --out again is refused without --overwrite
    argv = ["train", "policy", "--quick", "--data", trained.parent, "--out", trained.parent]
    assert main([str(x) for x in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a checkpoint" in err and "--overwrite" in err and "\n" not in err


def error_line(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_data_gives_one_line_errors(tmp_path, capsys):
    failed = write_dataset(tmp_path / "failed", outcomes=(False, False), front=False)
    err = error_line(
        capsys, "train", "policy", "--quick", "--data", failed, "--out", tmp_path / "a"
    )
    assert "none of its 2 episodes succeeded" in err and "--all-episodes" in err
    # ... which learns from the failures when asked to
    argv = ["train", "policy", "--quick", "--all-episodes", "--no-progress"]
    assert main([str(a) for a in [*argv, "--data", failed, "--out", tmp_path / "b"]]) == 0

    unlabelled = write_dataset(tmp_path / "unlabelled", outcomes=(True,), success=False)
    err = error_line(
        capsys, "train", "policy", "--quick", "--data", unlabelled, "--out", tmp_path / "c"
    )
    assert "no next.success labels" in err

    err = error_line(
        capsys,
        *("train", "policy", "--quick", "--data", failed, "--out", tmp_path / "d"),
        *("--all-episodes", "--set", "policy.cameras=[wrist, side]"),
    )
    assert "has no camera ['side']" in err and "wrist" in err
    err = error_line(
        capsys, "train", "policy", "--quick", "--data", tmp_path / "nothing", "--out", tmp_path
    )
    assert "nothing" in err


def test_chunks_past_an_episodes_end_repeat_its_last_action(dataset):
    demos = load_demonstrations(dataset, ("wrist",), 64, frame_stride=1)
    assert demos.episodes == [0, 2] and len(demos.state) == 2 * LENGTH
    rows = np.array([0, LENGTH - 2, LENGTH])
    idx = demos.chunk_rows(rows, 4)
    np.testing.assert_array_equal(idx[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(idx[1], [LENGTH - 2, LENGTH - 1, LENGTH - 1, LENGTH - 1])
    np.testing.assert_array_equal(idx[2], LENGTH + np.arange(4))  # the second episode's start
    # the second stored episode is the dataset's episode 2: its pan starts at 20 degrees
    assert demos.state[LENGTH, 0] == pytest.approx(20.0)
    # the wrist video decodes to what was written (AV1: within a few grey levels)
    assert (
        abs(
            float(demos.images["wrist"][0].mean())
            - (episode(0, True, {})["observation.images.wrist"][0].mean())
        )
        < 3
    )


def test_image_helpers():
    image = np.arange(128 * 128 * 3, dtype=np.uint32).reshape(128, 128, 3) % 251
    small = resize_image(image.astype(np.uint8), 64)
    want = image.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(small.astype(float) - want).max() <= 0.5
    assert resize_image(np.zeros((48, 64, 3), np.uint8), 32).shape == (32, 32, 3)
    x = torch.rand(3, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_shift(x, 0, gen), x)
    shifted = random_shift(x, 2, gen)
    assert shifted.shape == x.shape
    # every shifted image is a window of the edge-padded original
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(3):
        hits = [
            torch.equal(shifted[i], padded[i, :, dy : dy + 16, dx : dx + 16])
            for dy in range(5)
            for dx in range(5)
        ]
        assert any(hits)


def test_eval_policy_runs_closed_loop_in_mujoco(trained, tmp_path):
    out = tmp_path / "eval.json"
    argv = ["eval", "policy", "--quick", "--checkpoint", trained, "--json", out, "--no-progress"]
    argv += ["--execute", "5", "--image-size", "32", "--scripted"]
    assert main([str(a) for a in argv]) == 0
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["episodes"] == 2 and summary["seeds"] == [500000, 500001]
    assert summary["success_rate"] == 0.0  # an untrained policy does not grasp in one second
    assert [r["queries"] for r in result["episodes"]] == [10, 10]  # 50 steps, every 5th
    # nor does the scripted teacher (its grasp takes ~4 s), played on the same seeds
    assert [r["seed"] for r in result["scripted_episodes"]] == [500000, 500001]
    assert summary["scripted"]["success_rate"] == 0.0


def test_eval_refuses_more_rows_than_the_chunk_holds(trained, capsys):
    argv = ["eval", "policy", "--quick", "--checkpoint", trained, "--execute", "6"]
    assert main([str(a) for a in argv]) == 2
    assert "must be 1..the policy's chunk (5)" in capsys.readouterr().err


def test_the_shipped_policy_keeps_the_contract():
    """``load()`` with no path: the shipped grasp policy, as `kiwi slow --policy
    robot_runtime.bc_policy:load` gets it, fed what the simulated world's camera sends."""
    from robot_runtime.bc_eval import make_grasp_env

    policy = load()
    assert policy.cameras == ("wrist",) and policy.dt == pytest.approx(0.02)
    env = make_grasp_env()
    state = env.reset(seed=600_000)[0]["state"]
    wrist = env.unwrapped.render_camera("wrist", 128, 128)
    env.close()
    obs = {
        "observation.state": state,
        "observation.images.wrist": wrist,
        "task": "pick up the cube",
        "timestamp": 3.0,
    }
    chunk = policy(obs)
    assert chunk is not None and chunk.shape == (policy.chunk, 6) and chunk.dtype == np.float32
    assert policy.chunk == 50  # 1 s: what the eval figures in grasp_bc_policy.md are for
    # from the home pose it starts near home: degrees and 0..100, not normalised units
    assert np.abs(chunk[0] - obs["observation.state"]).max() < 10
    assert policy.meta["made_by"].startswith("kiwi train policy")
