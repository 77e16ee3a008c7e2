"""The shipped pixel grasp model (`shipped:grasp_pixels`) on a fresh simulated LeRobot collection:
`kiwi collect --format lerobot` with seeds outside every range it learned from, then
`kiwi eval grasp --data DIR --checkpoint shipped:grasp_pixels`, as the README measures it (on 4
episodes here; the figures come from 300, see robot_runtime/assets/grasp_pixels.md)."""

from __future__ import annotations

import json

from safetensors import safe_open

from robot_runtime.assets import resolve
from robot_runtime.cli import main
from world_model.grasp import load_grasp_predictor


def kiwi(*argv) -> int:
    return main([str(a) for a in argv])


def test_the_shipped_pixel_model_reads_cameras_and_joints_and_says_how_it_was_made():
    wm, predictor, _, _ = load_grasp_predictor(resolve("shipped:grasp_pixels"))
    assert set(wm.config.cnn_keys) == {"observation.images.wrist", "observation.images.front"}
    assert list(wm.config.mlp_keys) == ["observation.state"]
    assert predictor.horizon >= 1 and predictor.samples >= 1
    with safe_open(resolve("shipped:grasp_pixels"), "pt") as f:
        made_by = json.loads(f.metadata()["made_by"])
    assert made_by.startswith("kiwi train grasp --data ")


def test_the_shipped_pixel_model_scores_a_fresh_collection(tmp_path, capsys):
    data = tmp_path / "fresh"
    assert kiwi(
        "collect", "--env", "grasp", "--format", "lerobot", "--episodes", 3,
        "--seed", 5_100_000, "--out", data, "--no-progress",
    ) == 0  # fmt: skip
    report = tmp_path / "eval.json"
    assert kiwi(
        "eval", "grasp", "--data", data, "--checkpoint", "shipped:grasp_pixels",
        "--json", report, "--plot", tmp_path / "reliability.png", "--no-progress",
    ) == 0  # fmt: skip
    assert "a dataset it never saw" in capsys.readouterr().out
    summary = json.loads(report.read_text())
    assert summary["episodes"] == 3
    forecasts = [d["p_success"] for d in summary["decisions_detail"]]
    assert all(0.0 <= p <= 1.0 for p in forecasts) and 0.0 <= summary["brier"] <= 1.0
