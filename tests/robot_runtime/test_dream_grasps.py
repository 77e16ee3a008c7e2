"""Dreamed grasp attempts (robot_runtime/dream_grasps.py) and `kiwi eval grasp-curve`: varied
plans, the labeller's threshold, the subsets, and the whole curve on tiny LeRobot folders written
by the project's writer with a world model trained on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robot_runtime.cli import main
from robot_runtime.dream_grasps import (
    Dreams,
    check_labeller,
    fit_threshold,
    soft_labels,
    split,
    subsets,
    summarize,
    vary_plan,
)

from .pixel_dataset import write_dataset


def kiwi(*argv) -> int:
    return main([str(a) for a in argv])


def test_a_varied_plan_moves_the_aim_in_over_the_lead_and_the_close_in_time():
    actions = np.zeros((12, 6), np.float32)
    actions[:, 5] = [100] * 6 + [80, 50, 20, 0, 0, 0]  # the close starts at frame 6
    same = vary_plan(actions, 5, np.zeros(5), 0, 4)
    np.testing.assert_array_equal(same, actions)
    offset = np.array([4.0, 0, 0, 0, -20.0])
    plan = vary_plan(actions, 5, offset, 2, 4)
    np.testing.assert_allclose(plan[:4, 0], [1, 2, 3, 4])  # ramped in over the lead
    np.testing.assert_allclose(plan[4:, 0], 4.0)  # then held
    np.testing.assert_allclose(plan[3:, 4], -20.0)
    assert list(plan[:, 5]) == [100] * 8 + [80, 50, 20, 0]  # two frames later
    early = vary_plan(actions, 5, np.zeros(5), -3, 4)
    assert list(early[:, 5]) == [100] * 3 + [80, 50, 20] + [0] * 6  # the end repeats
    assert actions[0, 0] == 0  # the recorded actions are left alone


def test_the_threshold_separates_held_from_failed_and_the_check_counts_agreement():
    grip = np.array([1.0, 2.0, 3.0, 4.0, 30.0, 40.0, 50.0, 2.5])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1.0])  # the last one the dream gets wrong
    t = fit_threshold(grip, labels)
    assert 4.0 < t < 30.0
    dreams = Dreams(
        torch.zeros(8, 2, 3),
        torch.as_tensor(np.stack([grip, grip], 1)),
        np.zeros((8, 5)),
        np.zeros(8),
        np.arange(8),
    )
    check = check_labeller(dreams, labels, t)
    assert check.accuracy == pytest.approx(7 / 8)
    assert 0.5 < check.auroc < 1.0
    grip_end = torch.tensor([[1.0, 50.0], [50.0, 60.0], [0.0, 1.0]])
    dreams.grip_end = grip_end
    assert soft_labels(dreams, t).tolist() == [0.5, 1.0, 0.0]


def test_subsets_are_disjoint_and_split_keeps_the_calibration_share_last():
    assert subsets(250, 100, 3) == [list(range(100)), list(range(100, 200))]
    assert subsets(50, 100, 3) == []
    fit, cal = split(list(range(100)), 0.2)
    assert fit == list(range(80)) and cal == list(range(80, 100))
    rows = [
        {"real": 10, "dreamed": 0, "auroc": 0.6, "brier": 0.2, "ece": 0.1},
        {"real": 10, "dreamed": 0, "auroc": 0.8, "brier": 0.2, "ece": 0.3},
        {"real": 10, "dreamed": 40, "auroc": 0.9, "brier": 0.1, "ece": 0.1},
    ]
    real, dreamed = summarize(rows)
    assert real["repeats"] == 2 and real["auroc"] == pytest.approx(0.7)
    assert real["auroc_sd"] == pytest.approx(0.1) and dreamed["dreamed"] is True


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve")
    data = write_dataset(root / "train", episodes=56, length=40)
    test = write_dataset(root / "test", episodes=12, length=40)
    assert kiwi(
        "train", "world-model", "--config", "so101_pixels", "--quick", "--data", data,
        "--out", root / "wm", "--no-progress",
    ) == 0  # fmt: skip
    return data, test, root / "wm" / "checkpoint.safetensors"


def test_the_curve_fits_real_and_dreamed_heads_and_scores_them_on_the_test_set(
    two_datasets, tmp_path, capsys
):
    data, test, wm = two_datasets
    out = tmp_path / "curve"
    args = [
        "eval", "grasp-curve", "--init", wm, "--data", data, "--test", test, "--out", out,
        "--sizes", "12,24", "--repeats", "2", "--plans", "3", "--lead", "3", "--timing", "2",
        "--test-samples", "4", "--set", "gate.horizon=3", "--no-progress",
    ]  # fmt: skip
    assert kiwi(*args) == 0
    printed = capsys.readouterr().out
    assert "dreams help" in printed or "dreams do not help" in printed
    report = json.loads((out / "curve.json").read_text())
    conditions = sorted((r["real"], r["dreamed"] > 0, r["repeat"]) for r in report["rows"])
    assert conditions[:4] == [(12, False, 0), (12, False, 1), (12, True, 0), (12, True, 1)]
    assert (24, False, 0) in conditions
    dreamed = [r for r in report["rows"] if r["dreamed"]]
    assert all(r["dreamed"] > 0 and 0 <= r["ece"] <= 1 for r in dreamed)
    assert len(report["labeller"]) == 2
    assert all(0 <= c["labeller_accuracy"] <= 1 for c in report["labeller"])
    assert report["test"]["grasps"] > 0 and report["test"]["dataset"] == str(test)
    assert report["horizon"] == 3  # --set reached the gate's settings
    assert (out / "curve.png").stat().st_size > 10_000
    assert kiwi(*args) == 2  # a second run never writes over the first
    assert "already holds" in capsys.readouterr().err


def test_the_curve_refuses_its_training_data_as_the_test_set(two_datasets, tmp_path, capsys):
    data, _, wm = two_datasets
    assert kiwi(
        "eval", "grasp-curve", "--init", wm, "--data", data, "--test", data,
        "--out", tmp_path / "c", "--no-progress",
    ) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--test must be another dataset" in err and "Traceback" not in err


def test_a_dreamed_close_never_moves_before_the_dream_and_its_feature_is_after_it(
    two_datasets, tmp_path
):
    """With a lead of 2 frames and a timing of 8, the close may move 1 frame earlier at most, so
    the state read `horizon` frames after it is inside the dream (a negative index would have
    read the dream's end)."""
    from robot_runtime.dataset_grasp import close_frame
    from robot_runtime.dataset_lab import job_of
    from robot_runtime.dataset_world_model import cached_episodes
    from robot_runtime.dream_grasps import dream_attempts
    from world_model.datasets import LeRobotReader
    from world_model.model import WorldModel

    data, _, wm_path = two_datasets
    wm, meta, _ = WorldModel.load(wm_path)
    with LeRobotReader(data) as reader:
        cache = cached_episodes(
            reader, job_of(meta, wm_path), list(range(6)), tmp_path, False, print
        )
    dreams = dream_attempts(
        wm.eval(), cache.episodes, lambda a: close_frame(a, 5), 5, plans=6, samples=2,
        horizon=1, seed=0, lead=2, timing=8,
    )  # fmt: skip
    assert dreams.shifts.min() >= -1 and dreams.shifts.max() <= 8
    assert dreams.feat.shape[:2] == (len(dreams.shifts), 2)
    assert torch.isfinite(dreams.feat).all() and torch.isfinite(dreams.grip_end).all()


def test_the_curve_refuses_too_few_episodes_before_decoding_and_names_a_missing_model(
    two_datasets, tmp_path, capsys
):
    data, test, wm = two_datasets
    out = tmp_path / "c"
    common = ["--data", data, "--test", test, "--out", out, "--no-progress"]
    assert kiwi("eval", "grasp-curve", "--init", wm, "--sizes", "500", *common) == 2
    assert "56 episodes, fewer than the smallest size 500" in capsys.readouterr().err
    assert not (out / "cache").exists()  # nothing decoded for a run that cannot happen
    assert kiwi("eval", "grasp-curve", "--init", "shipped:nope", *common) == 2
    assert "'nope' is not in" in capsys.readouterr().err
