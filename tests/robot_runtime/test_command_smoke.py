"""Every `kiwi` subcommand runs end to end on tiny settings (issue 11): the headline evaluations,
grasp training and the grasp check, which had no test of their own. Each runs through the CLI's
``main`` (argument parsing, config loading, output files) on real data the test makes: a few
scripted grasps recorded by `kiwi collect`, a tiny world model trained on them."""

from __future__ import annotations

import json

import pytest

from robot_runtime.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grasp_model(tmp_path_factory):
    """`kiwi collect` -> `kiwi train world-model` -> `kiwi train grasp`, all --quick."""
    tmp = tmp_path_factory.mktemp("grasp")
    data, wm, heads = tmp / "data", tmp / "wm", tmp / "heads"
    assert main(["collect", "--env", "grasp", "--episodes", "24", "--out", str(data)]) == 0
    train = ["train", "world-model", "--config", "sim_grasp", "--quick", "--no-progress"]
    assert main([*train, "--data", str(data), "--out", str(wm)]) == 0
    args = [
        "train", "grasp", "--config", "sim_grasp", "--quick", "--no-progress",
        "--init", str(wm / "checkpoint.safetensors"), "--data", str(data), "--out", str(heads),
        "--set", "gate.calibration_episodes=2", "--set", "gate.epochs=2",
    ]  # fmt: skip
    assert main(args) == 0
    files = sorted(p.name for p in heads.iterdir() if p.suffix == ".safetensors")
    assert files, f"kiwi train grasp wrote no model in {heads}"
    return heads / files[0]


def test_train_grasp_writes_a_model_with_success_heads(grasp_model):
    from world_model.checkpoint import load_tensors

    groups, meta = load_tensors(grasp_model)
    assert "success_head" in groups and "success_head_now" in groups


def test_eval_grasp_quick_on_the_shipped_model_writes_figures(tmp_path):
    out = tmp_path / "g.json"
    args = [
        "eval", "grasp", "--quick", "--no-progress", "--json", str(out),
        "--plot", str(tmp_path / "g.png"),
    ]  # fmt: skip
    assert main(args) == 0
    figures = json.loads(out.read_text())
    assert {"auroc", "brier", "ece", "success_rate_gated"} <= set(figures)
    assert (tmp_path / "g.png").stat().st_size > 1000


def test_eval_grasp_on_a_tiny_trained_model_ends_cleanly(grasp_model, tmp_path, capsys):
    """A model too small to find the cube reaches no decision: the command says so and ends."""
    out = tmp_path / "g.json"
    args = ["eval", "grasp", "--quick", "--no-progress", "--checkpoint", str(grasp_model)]
    assert main([*args, "--json", str(out), "--plot", str(tmp_path / "g.png")]) in (0, 1)
    assert "held-out episodes" in capsys.readouterr().out


def test_grasp_check_forecasts_and_executes(grasp_model, capsys):
    base = ["grasp-check", "--seed", "200003", "--checkpoint", str(grasp_model), "--samples", "4"]
    assert main(base) in (0, 1)  # 1: a tiny model may never see the cube well enough to decide
    out = capsys.readouterr().out
    assert "P(success) =" in out or "never reached the decision" in out
    assert main([*base, "--execute"]) in (0, 1)
    out = capsys.readouterr().out
    assert "executed: the grasp" in out or "never reached the decision" in out


def test_grasp_check_on_the_shipped_model(capsys):
    assert main(["grasp-check", "--seed", "200001", "--samples", "8"]) == 0
    assert "P(success) =" in capsys.readouterr().out


def test_eval_latency_quick_on_both_tasks(tmp_path):
    out = tmp_path / "lat.json"
    args = [
        "eval", "latency", "--quick", "--no-progress", "--json", str(out),
        "--plot", str(tmp_path / "lat.png"),
    ]  # fmt: skip
    assert main(args) == 0
    rows = json.loads(out.read_text())
    text = json.dumps(rows)
    assert "pendulum" in text and "grasp" in text
    assert (tmp_path / "lat.png").stat().st_size > 1000
