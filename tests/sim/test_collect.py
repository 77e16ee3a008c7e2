import json

import numpy as np
import pytest

from robot_runtime.cli import main
from world_model.replay import Replay, load_spec


@pytest.mark.slow
def test_collected_episodes_load_into_the_replay_and_replay_as_video(tmp_path, capsys):
    out = tmp_path / "grasp"
    assert (
        main(
            [
                "collect",
                "--env",
                "grasp",
                "--episodes",
                "3",
                "--out",
                str(out),
                "--seed",
                "5",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 3
    replay = Replay(out)
    assert replay.num_episodes == 3
    spec = load_spec(out)
    assert spec.vector_dims == {"state": 6, "object": 4} and spec.action_dim == 6
    episode = replay.episodes[0]
    length = len(episode["action"])
    assert episode["state"].shape == (length, 6) and episode["object"].shape == (length, 4)
    assert episode["is_first"][0] and episode["is_last"][-1] and not episode["is_terminal"].any()
    assert np.all(episode["success"] == episode["success"][0])  # the outcome, on every step
    assert episode["is_success"][-1] == episode["success"][0]
    batch = replay.sample(2, 32, np.random.default_rng(0))
    assert batch["state"].shape == (2, 32, 6)
    video = tmp_path / "ep.gif"
    assert (
        main(
            [
                "sim",
                "replay",
                str(replay.paths[0]),
                "--video",
                str(video),
                "--every",
                "20",
                "--height",
                "60",
                "--width",
                "80",
            ]
        )
        == 0
    )
    assert video.read_bytes()[:6] == b"GIF89a"
