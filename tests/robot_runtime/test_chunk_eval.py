"""`kiwi eval chunks` (issue 13 item 5): the lockstep episode, the policy contract, the CLI."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from robot_runtime import chunk_eval
from robot_runtime.chunk_eval import Setup, boundary_jerk, run_episode
from robot_runtime.chunk_policies import load_policy
from robot_runtime.cli import main

from .runtime_helpers import grasp_job, tiny_grasp_model


def test_boundary_jerk_is_the_third_difference_at_the_takeover_ticks():
    commands = np.zeros((20, 6))
    commands[10:, 2] = 1.0  # a one-degree step at tick 10
    jerk = boundary_jerk(commands, [10], 0.02)
    assert jerk.shape == (4, 5)
    assert np.allclose(jerk[:, 2] * 0.02**3, [1, -2, 1, 0])  # a step's third difference
    assert np.allclose(np.delete(jerk, 2, axis=1), 0)
    assert boundary_jerk(commands, [], 0.02).shape == (0, 5)


class FakeNaNPolicy:
    """A fake policy: answers every observation with NaN rows (and counts its calls)."""

    dt = 0.02
    cameras = ("wrist",)

    def __init__(self):
        self.calls = 0

    def __call__(self, observation):
        assert observation["observation.state"].shape == (6,)
        assert observation["observation.images.wrist"].dtype == np.uint8
        assert isinstance(observation["task"], str) and observation["timestamp"] >= 0
        self.calls += 1
        return np.full((30, 6), np.nan)


def test_a_policy_answering_nan_never_moves_the_arm_and_is_counted():
    job = grasp_job()
    policy = FakeNaNPolicy()
    episode = run_episode(
        job, tiny_grasp_model(), policy, Setup("grasp", "latent", 5, max_s=0.6), 7
    )
    env = chunk_eval._ENVS["grasp"]
    assert episode.policy_errors == policy.calls >= 3 and not episode.success
    start = type(env)().reset(seed=7)[0]["state"]
    assert np.abs(env.joint_state() - start)[:5].max() < 0.5, "the arm held"


def test_the_scripted_policy_keeps_the_contract():
    policy = load_policy("scripted")
    assert policy.dt == 0.02
    env = chunk_eval.make_env("grasp")
    obs, _ = env.reset(seed=400_000)
    rows = policy(
        {
            "observation.state": obs["state"],
            "observation.images.wrist": env.render_camera("wrist", 128, 128),
            "task": "pick up the red cube",
            "timestamp": 0.0,
        }
    )
    assert rows.shape == (100, 6) and rows.dtype == np.float32 and np.all(np.isfinite(rows))
    assert np.allclose(rows[0, :5], obs["state"][:5], atol=1e-3), "row 0 is for the capture time"


def test_bad_policy_specs_are_one_line_errors(capsys, monkeypatch, tmp_path):
    for spec, says in (
        ("nonsense", "is not MODULE:FACTORY or lerobot:PATH"),
        ("no_such_module_xyz:make", "cannot import"),
        ("json:no_such_factory", "no callable"),
    ):
        with pytest.raises(ValueError, match=says):
            load_policy(spec)
    fake = types.ModuleType("fake_chunk_policies")
    fake.make = lambda: 42  # a factory that returns no policy
    monkeypatch.setitem(sys.modules, "fake_chunk_policies", fake)
    code = main(
        [
            "eval",
            "chunks",
            "--policy",
            "fake_chunk_policies:make",
            "--quick",
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "not a callable policy" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_quick_eval_writes_rows_and_a_plot_and_refuses_to_overwrite(tmp_path, capsys):
    out, plot = tmp_path / "chunks.json", tmp_path / "chunks.png"
    args = [
        "eval",
        "chunks",
        "--quick",
        "--tasks",
        "grasp_moving",
        "--modes",
        "blend,latent",
        "--delays",
        "300",
        "--workers",
        "1",
        "--no-progress",
        "--json",
        str(out),
        "--plot",
        str(plot),
    ]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert {(r["task"], r["mode"], r["delay_ms"]) for r in rows} == {
        ("grasp_moving", "blend", 300),
        ("grasp_moving", "latent", 300),
    }
    assert {r["metric"] for r in rows} == {"success_rate", "completion_s", "jerk_rms"}
    assert all(r["episodes"] == 1 for r in rows)
    jerk = {r["mode"]: r["value"] for r in rows if r["metric"] == "jerk_rms"}
    assert jerk["latent"] < jerk["blend"], "the join removes the boundary's jump"
    assert plot.stat().st_size > 1000
    capsys.readouterr()
    assert main(args) == 2
    assert "exists (pass --force" in capsys.readouterr().err


def rows_of(table: dict) -> list[dict]:
    """``{(task, mode, delay): (success, jerk)}`` -> JSON rows as the eval writes them."""
    out = []
    for (task, mode, delay), (success, jerk) in table.items():
        base = {"task": task, "mode": mode, "delay_ms": delay, "episodes": 20}
        out += [
            {**base, "metric": "success_rate", "value": success, "ci95": 0.2},
            {**base, "metric": "completion_s", "value": 4.2, "ci95": 0.01},
            {**base, "metric": "jerk_rms", "value": jerk, "ci95": None, "refused": {}},
        ]
    return out


def test_verdicts_check_the_issues_targets():
    from robot_runtime.chunk_report import verdicts

    good = rows_of(
        {
            ("grasp_moving", "blend", 0): (0.8, 2e5),
            ("grasp_moving", "blend", 300): (0.5, 2e5),
            ("grasp_moving", "latent", 0): (0.8, 5e4),
            ("grasp_moving", "latent", 300): (0.75, 5e4),
        }
    )
    lines = "\n".join(verdicts(good))
    assert "0.75 vs 0.80 at 0 ms (within 10 %)" in lines
    assert "blend fell 0.30 from 0 ms; latent +0.25 over blend (meets" in lines
    assert "latent below blend at every delay on both tasks: yes" in lines
    assert "spread 0.00, within" in lines
    bad = rows_of(
        {
            ("grasp_moving", "blend", 0): (0.8, 2e5),
            ("grasp_moving", "blend", 300): (0.5, 4e4),
            ("grasp_moving", "latent", 0): (0.8, 5e4),
            ("grasp_moving", "latent", 300): (0.6, 5e4),
        }
    )
    lines = "\n".join(verdicts(bad))
    assert "NOT within 10 %" in lines and "MISSES" in lines and "NO (grasp_moving 300 ms)" in lines


def test_from_json_remakes_the_report_without_a_run(tmp_path, capsys):
    path, plot = tmp_path / "rows.json", tmp_path / "rows.png"
    path.write_text(json.dumps(rows_of({("grasp", "blend", 0): (1.0, 2e5)})))
    assert main(["eval", "chunks", "--from-json", str(path), "--plot", str(plot)]) == 0
    assert plot.stat().st_size > 1000 and "blend" in capsys.readouterr().out
    path.write_text('{"not": "rows"}')
    assert main(["eval", "chunks", "--from-json", str(path), "--plot", str(plot), "--force"]) == 2
    assert "not a list of" in capsys.readouterr().err
