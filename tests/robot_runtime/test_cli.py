import json
import subprocess
import sys

import pytest
import torch

from robot_runtime.cli import main


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys; from robot_runtime.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_typo_is_an_error_exit_not_a_traceback(capsys):
    assert main(["lab", "pendulum", "--set", "model.detr=3", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "model.detr" in err and "Traceback" not in err


@pytest.mark.slow
def test_lab_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "lab"
    assert main(["lab", "pendulum", "--quick", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["nmse_open_loop"]) == {"1", "5", "15"}
    assert set(report["nmse_persistence"]) == {"1", "5", "15"}
    assert report["train_wall_s"] > 0
    # Persistence at horizon 1 on random-torque Pendulum is about 0.03 (a property of the data).
    assert 0.005 < report["nmse_persistence"]["1"] < 0.1
    for name in ("recon.png", "imagination.png", "horizon.png", "checkpoint.safetensors"):
        assert (out / name).stat().st_size > 1000, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --resume picks the checkpoint up and trains on to a larger step budget.
    assert (
        main(
            [
                "lab",
                "pendulum",
                "--quick",
                "--out",
                str(out),
                "--no-progress",
                "--resume",
                "--set",
                "train.steps=70",
            ]
        )
        == 0
    )
    assert json.loads((out / "report.json").read_text())["train_steps"] == 70


@pytest.mark.slow
def test_train_agent_quick_writes_eval_json_and_ships_a_lean_agent(tmp_path, monkeypatch):
    from robot_runtime import assets
    from world_model.checkpoint import load_tensors
    from world_model.train import load_agent

    monkeypatch.setattr(assets, "ASSETS", tmp_path / "assets")
    (tmp_path / "assets").mkdir()
    out = tmp_path / "agent"
    args = ["train", "agent", "--quick", "--out", str(out), "--no-progress", "--env-steps", "450"]
    assert main([*args, "--ship"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert {"return_mean", "return_std", "episodes", "env_steps", "wall_s"} <= set(result)
    assert result["env_steps"] == 450 and result["episodes"] == 2
    assert -3300 < result["return_mean"] <= 0  # Pendulum returns lie in [-3255, 0]

    shipped = tmp_path / "assets" / "pendulum_agent.safetensors"
    groups, meta = load_tensors(shipped)
    assert set(groups) == {"model", "actor"}  # no optimizer state, no critics
    assert "--ship" in meta["made_by"] and meta["eval"]["return_mean"] == result["return_mean"]
    wm, behavior, _ = load_agent(shipped)
    wm_full, behavior_full, _ = load_agent(out / "checkpoint.safetensors")
    state = wm.initial(1)
    assert torch.equal(
        behavior.policy(state, sample=False), behavior_full.policy(state, sample=False)
    )
    assert "kiwi train agent" in (tmp_path / "assets" / "pendulum_agent.md").read_text()


def test_train_world_model_on_a_data_folder_and_resume(tmp_path):
    from robot_runtime.config import PendulumJob, load_config
    from robot_runtime.lab import prepare_data

    job, _ = load_config("pendulum", PendulumJob, preset="quick")
    prepare_data(job, tmp_path / "data", progress=False, log=lambda s: None)
    out = tmp_path / "wm"
    args = [
        "train",
        "world-model",
        "--quick",
        "--data",
        str(tmp_path / "data" / "replay"),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args + ["--steps", "5"]) == 0
    assert main(args + ["--steps", "8", "--resume"]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 8


def test_train_world_model_reports_a_folder_without_episodes(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "world-model",
                "--quick",
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no episodes" in capsys.readouterr().err
