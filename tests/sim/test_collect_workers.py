"""`kiwi collect --workers N`: the same episodes for any N, in seed order, and a folder that loads
and resumes after a worker is killed (robot_runtime/collect_pool.py). Real MuJoCo in real
worker processes; episodes cut at 30 steps (the env's own TimeLimit) to keep this quick."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from robot_runtime.collect import (
    CollectError,
    collect_grasps,
    collect_grasps_lerobot,
    make_grasp_env,
)
from world_model.datasets import LeRobotReader
from world_model.replay import episode_files, load_episode

SHORT_ENV = partial(make_grasp_env, (), 64, max_episode_steps=25)


def lerobot_columns(root: Path) -> list[dict[str, np.ndarray]]:
    with LeRobotReader(root) as ds:
        return [ds.read_episode(i).arrays for i in range(ds.num_episodes)]


def by_seed(folder: Path) -> dict[int, dict[str, np.ndarray]]:
    episodes = [load_episode(p) for p in episode_files(folder)]
    return {int(e["seed"][0]): e for e in episodes}


def test_one_and_two_workers_give_the_same_episodes_in_seed_order(tmp_path):
    # a LeRobot folder with a camera: with two workers they encode it, the parent appends
    kw = dict(progress=False, log=lambda s: None)
    wrist = partial(make_grasp_env, ("wrist",), 32, max_episode_steps=25)
    lr = dict(cameras=("wrist",), image_size=32, make_env=wrist, **kw)
    one = collect_grasps_lerobot(tmp_path / "lr1", 3, 20, workers=1, **lr)
    two = collect_grasps_lerobot(tmp_path / "lr2", 3, 20, workers=2, **lr)
    assert one["episodes"] == two["episodes"] == 3 and two["workers"] == 2
    assert one["outcomes"] == two["outcomes"] and one["steps"] == two["steps"]
    files = sorted(
        p.relative_to(tmp_path / "lr1") for p in (tmp_path / "lr1").rglob("*") if p.is_file()
    )
    assert any(p.suffix == ".mp4" for p in files)
    for path in files:  # byte for byte: data, metadata, statistics and video
        assert (tmp_path / "lr1" / path).read_bytes() == (tmp_path / "lr2" / path).read_bytes(), (
            path
        )
    a = lerobot_columns(tmp_path / "lr1")
    assert [int(e["seed"][0]) for e in a] == [20, 21, 22]
    # the npz format: workers write the files themselves; the same episodes per seed
    kw.update(cameras=(), make_env=SHORT_ENV)
    npz = collect_grasps(tmp_path / "npz2", 3, 20, workers=2, **kw)
    assert npz["total_episodes_in_folder"] == 3
    for seed, episode in by_seed(tmp_path / "npz2").items():
        frames = a[seed - 20]
        np.testing.assert_array_equal(episode["state"][:-1], frames["observation.state"])
        np.testing.assert_array_equal(episode["action"][:-1], frames["action"])


def worker_pids(parent: int) -> list[int]:
    """The pool's worker processes: the parent's children started by multiprocessing's spawn."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    out = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            out.append(pid)
    return out


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def episodes_in(root: Path) -> int:
    info = root / "meta" / "info.json"
    if not info.is_file():
        return 0
    with LeRobotReader(root) as ds:
        return ds.num_episodes


SCRIPT = """
import sys
from functools import partial
from robot_runtime.collect import CollectError, collect_grasps_lerobot, make_grasp_env
try:
    collect_grasps_lerobot({out!r}, 100_000, 0, cameras=(), progress=False, workers=2,
                           make_env=partial(make_grasp_env, (), 64, max_episode_steps=25))
except CollectError as e:
    print("CollectError:", e, flush=True)
    sys.exit(3)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill a worker", "ctrl-c"])
def test_a_killed_worker_or_ctrl_c_leaves_a_folder_that_loads_and_resumes(tmp_path, how):
    out = tmp_path / "lr"
    script = textwrap.dedent(SCRIPT.format(out=str(out)))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: episodes_in(out) >= 2, 120, "two episodes")
        if how == "ctrl-c":
            os.kill(proc.pid, signal.SIGINT)
        else:
            os.kill(wait_for(lambda: worker_pids(proc.pid), 10, "the workers")[0], signal.SIGKILL)
        text, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if how == "ctrl-c":
        assert proc.returncode == 130 and "interrupted" in text, text
    else:
        assert proc.returncode == 3 and "CollectError: a collection worker died" in text, text
    stored = episodes_in(out)
    assert 2 <= stored < 100_000
    seeds = [int(e["seed"][0]) for e in lerobot_columns(out)]
    assert seeds == list(range(stored)), "in seed order, without a gap"
    summary = collect_grasps_lerobot(
        out, stored + 2, 0, cameras=(), progress=False, workers=2, make_env=SHORT_ENV
    )
    assert summary["already_there"] == stored and summary["episodes"] == 2
    assert [int(e["seed"][0]) for e in lerobot_columns(out)] == list(range(stored + 2))


def test_collect_error_is_a_one_line_kiwi_error():
    from world_model.errors import KiwiError

    assert issubclass(CollectError, KiwiError)
