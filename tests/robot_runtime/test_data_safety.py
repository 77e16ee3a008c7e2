"""Data commands never lose or duplicate: collect resumes, training refuses to write over a
previous run unless told, killed runs' temporary files go, JSON stays JSON, damaged files are
one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robot_runtime.cli import main
from world_model.atomic import TEMP_SUFFIX
from world_model.replay import SPEC_FILE, episode_files, save_episode


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("kiwi: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def stale_temp(folder: Path, target: str = "x.npz") -> Path:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a process id that has exited
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{target}.{proc.pid}-0123abcd{TEMP_SUFFIX}"
    path.write_bytes(b"half a file")
    return path


def seeds_in(folder: Path) -> list[int]:
    seeds = []
    for p in episode_files(folder):
        with np.load(p) as data:
            seeds.append(int(data["seed"][0]))
    return sorted(seeds)


# --- kiwi collect -------------------------------------------------------------------------


def collect(out: Path, episodes: int, *extra: str) -> int:
    args = ["collect", "--episodes", str(episodes), "--out", str(out), "--no-progress"]
    return main([*args, *extra])


def test_collect_resumes_and_never_stores_a_seed_twice(tmp_path, capsys):
    out = tmp_path / "grasp"
    assert collect(out, 2) == 0
    assert seeds_in(out) == [0, 1]
    capsys.readouterr()
    assert collect(out, 4, "--json") == 0  # re-run after a crash, or asked for more
    stdout = capsys.readouterr().out
    assert "2 episodes already there, collecting seeds 2..3" in stdout
    summary = strict_json(stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and summary["already_there"] == 2
    assert summary["total_episodes_in_folder"] == 4
    assert seeds_in(out) == [0, 1, 2, 3]
    assert collect(out, 4, "--json") == 0
    stdout = capsys.readouterr().out
    assert "4 episodes already there, nothing to collect" in stdout
    summary = strict_json(stdout.strip().splitlines()[-1])  # no NaN success rate
    assert summary["episodes"] == 0 and summary["success_rate"] is None
    assert seeds_in(out) == [0, 1, 2, 3]


def test_collect_removes_only_stale_temp_files(tmp_path, capsys):
    out = tmp_path / "grasp"
    stale = stale_temp(out)
    mine = out / "notes.tmp"
    mine.write_text("a file of the user's")
    assert collect(out, 1) == 0
    assert not stale.exists() and mine.read_text() == "a file of the user's"
    assert "removed 1 temporary file(s)" in capsys.readouterr().out


def test_collect_refuses_a_folder_of_another_kind(tmp_path, capsys):
    out = tmp_path / "pendulum"
    out.mkdir()
    spec = '{"vector_dims": {"state": 3}, "action_dim": 1}'
    (out / SPEC_FILE).write_text(spec)
    assert collect(out, 1) == 2
    assert "holds episodes of another kind" in one_line_error(capsys)
    assert (out / SPEC_FILE).read_text() == spec and not episode_files(out)


def test_collect_names_a_damaged_episode_in_its_folder(tmp_path, capsys):
    out = tmp_path / "grasp"
    assert collect(out, 1) == 0
    (out / "broken.npz").write_bytes(b"PK\x03\x04 half")
    capsys.readouterr()
    assert collect(out, 2) == 2
    assert "broken.npz" in one_line_error(capsys)
    assert seeds_in_ok(out) == 1


def seeds_in_ok(out: Path) -> int:
    return sum(1 for p in episode_files(out) if p.name != "broken.npz")


# --- kiwi train world-model / lab: --resume and --overwrite -------------------------------


@pytest.fixture(scope="module")
def pendulum_data(tmp_path_factory) -> Path:
    from robot_runtime.config import PendulumJob, load_config
    from robot_runtime.lab import prepare_data

    job, _ = load_config("pendulum", PendulumJob, preset="quick")
    root = tmp_path_factory.mktemp("data")
    prepare_data(job, root, progress=False, log=lambda s: None)
    return root / "replay"


def train_wm(data: Path, out: Path, steps: int, *extra: str) -> int:
    args = ["train", "world-model", "--quick", "--data", str(data), "--out", str(out)]
    return main([*args, "--no-progress", "--steps", str(steps), *extra])


def test_train_world_model_refuses_to_write_over_a_checkpoint(pendulum_data, tmp_path, capsys):
    from world_model.checkpoint import load_tensors

    out = tmp_path / "wm"
    assert train_wm(pendulum_data, out, 5) == 0
    before = (out / "checkpoint.safetensors").read_bytes()
    capsys.readouterr()
    assert train_wm(pendulum_data, out, 3) == 2
    err = one_line_error(capsys)
    assert "already holds a checkpoint" in err and "step 5" in err
    assert "--resume" in err and "--overwrite" in err
    assert (out / "checkpoint.safetensors").read_bytes() == before

    stale = stale_temp(out, "checkpoint.safetensors")
    assert train_wm(pendulum_data, out, 3, "--overwrite") == 0
    assert not stale.exists()
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert meta["step"] == 3
    steps = [strict_json(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3]  # the old run's lines went with it


def test_resume_without_a_checkpoint_is_an_error(pendulum_data, tmp_path, capsys):
    assert train_wm(pendulum_data, tmp_path / "wm", 3, "--resume") == 2
    assert "holds no checkpoint.safetensors to continue" in one_line_error(capsys)
    assert not (tmp_path / "wm" / "checkpoint.safetensors").exists()
    assert main(["lab", "pendulum", "--quick", "--out", str(tmp_path / "lab"), "--resume"]) == 2
    assert "--resume" in one_line_error(capsys)


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["lab", "pendulum", "--out", str(tmp_path), "--resume", "--overwrite"])
    assert info.value.code == 2


def test_resume_keeps_metrics_to_the_checkpoint_step(pendulum_data, tmp_path):
    out = tmp_path / "wm"
    assert train_wm(pendulum_data, out, 4) == 0
    metrics = out / "metrics.jsonl"
    # lines a killed run wrote after its last checkpoint, the last one half written
    metrics.write_text(metrics.read_text() + '{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
    assert train_wm(pendulum_data, out, 6, "--resume") == 0
    assert [strict_json(line)["step"] for line in metrics.read_text().split("\n") if line] == [
        4,
        6,
    ]


def test_lab_refuses_to_write_over_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "lab"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"a previous run")
    assert main(["lab", "pendulum", "--quick", "--out", str(out)]) == 2
    assert "--overwrite" in one_line_error(capsys)
    assert (out / "checkpoint.safetensors").read_bytes() == b"a previous run"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors"]


def test_a_damaged_checkpoint_to_resume_is_a_one_line_error(pendulum_data, tmp_path, capsys):
    out = tmp_path / "wm"
    assert train_wm(pendulum_data, out, 3) == 0
    path = out / "checkpoint.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    assert train_wm(pendulum_data, out, 5, "--resume") == 2
    assert "damaged or was edited" in one_line_error(capsys)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    assert train_wm(pendulum_data, out, 5, "--resume") == 2
    assert "not a readable safetensors file" in one_line_error(capsys)


# --- kiwi train agent / grasp -------------------------------------------------------------


def test_train_agent_refuses_a_previous_run_and_has_no_resume(tmp_path, capsys):
    out = tmp_path / "agent"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"a previous run")
    args = ["train", "agent", "--quick", "--out", str(out), "--no-progress"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "--overwrite" in err and "--resume" not in err
    with pytest.raises(SystemExit):
        main([*args, "--resume"])
    (out / "checkpoint.safetensors").unlink()  # killed before its first checkpoint
    t = np.arange(4, dtype=np.float32)
    save_episode(
        out / "replay",
        {
            "state": np.zeros((4, 3), np.float32),
            "action": t[:, None],
            "reward": t,
            "is_first": t == 0,
            "is_last": t == 3,
            "is_terminal": t < 0,
        },
    )
    capsys.readouterr()
    assert main(args) == 2
    assert "holds 1 episodes of an earlier run" in one_line_error(capsys)


def test_train_grasp_refuses_to_write_over_its_model(tmp_path, capsys):
    out = tmp_path / "grasp"
    out.mkdir()
    (out / "grasp_model.safetensors").write_bytes(b"a previous run")
    args = ["train", "grasp", "--init", "x", "--data", str(tmp_path), "--out", str(out)]
    assert main(args) == 2
    assert "--overwrite to replace it" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["grasp_model.safetensors"]
    with pytest.raises(SystemExit):
        main([*args, "--resume"])


# --- damaged data ------------------------------------------------------------------------


def test_a_truncated_episode_or_spec_is_a_one_line_error(pendulum_data, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(pendulum_data, data)
    victim = episode_files(data)[1]
    victim.write_bytes(victim.read_bytes()[:1000])
    assert train_wm(data, tmp_path / "a", 2) == 2
    assert victim.name in one_line_error(capsys)
    victim.unlink()
    (data / SPEC_FILE).write_text('{"vector_dims": {"state": 3}, "action_dim": ')
    assert train_wm(data, tmp_path / "b", 2) == 2
    assert SPEC_FILE in one_line_error(capsys)


def test_agent_metrics_and_eval_are_valid_json_even_with_nan(tmp_path):
    from world_model.train import MetricLog

    log = MetricLog(tmp_path / "metrics.jsonl")
    log.add({"loss": float("nan"), "kl": 1.0})
    log.flush(env_step=200, train_return=float("nan"))
    record = strict_json((tmp_path / "metrics.jsonl").read_text())
    assert record == {"env_step": 200, "train_return": None, "loss": None, "kl": 1.0}


def test_no_stale_temp_file_check_touches_a_live_writer(tmp_path):
    from world_model.atomic import remove_stale_temp_files

    live = tmp_path / f".x.npz.{os.getpid()}-0123abcd{TEMP_SUFFIX}"
    live.write_bytes(b"being written")
    assert remove_stale_temp_files(tmp_path) == [] and live.exists()


def test_train_agent_overwrite_starts_again_with_its_own_experience_only(tmp_path, capsys):
    out = tmp_path / "agent"
    args = ["train", "agent", "--quick", "--out", str(out), "--no-progress", "--env-steps", "201"]
    args += ["--set", "agent.prefill=200", "--set", "agent.eval_episodes=1"]
    assert main(args) == 0
    first = episode_files(out / "replay")
    assert len(first) == 1
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0
    again = episode_files(out / "replay")
    assert len(again) == 1 and again != first  # not the old episode plus a new one
    strict_json((out / "eval.json").read_text())


def test_interrupted_pendulum_collection_goes_on_without_repeats(tmp_path):
    from robot_runtime.config import PendulumJob, load_config
    from robot_runtime.lab import prepare_data

    job, _ = load_config("pendulum", PendulumJob, preset="quick")
    job = job.model_copy(update={"data": job.data.model_copy(update={"random_steps": 600})})
    train, _, _ = prepare_data(job, tmp_path, progress=False, log=lambda s: None)
    assert train.num_episodes == 3
    written = sorted(episode_files(tmp_path / "replay"), key=lambda p: p.stat().st_mtime_ns)
    for path in written[1:]:  # killed after its first episode
        path.unlink()
    train, _, _ = prepare_data(job, tmp_path, progress=False, log=lambda s: None)
    assert train.num_episodes == 3
    starts = {tuple(ep["state"][0].round(6)) for ep in train.episodes}
    actions = {tuple(ep["action"][:5, 0].round(6)) for ep in train.episodes}
    assert len(starts) == 3 and len(actions) == 3  # no episode stored twice
