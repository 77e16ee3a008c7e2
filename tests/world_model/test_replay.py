import numpy as np
import pytest

from world_model.errors import ReplayError
from world_model.replay import SPEC_FILE, Replay, load_episode, load_spec, save_episode


def episode(length: int, offset: float = 0.0) -> dict:
    t = np.arange(length, dtype=np.float32)
    return {
        "state": np.stack([t + offset] * 3, -1),
        "action": t[:, None] + offset,
        "reward": t.copy(),
        "is_first": t == 0,
        "is_last": t == length - 1,
        "is_terminal": np.zeros(length, bool),
    }


def test_episodes_round_trip_and_are_written_atomically(tmp_path):
    path = save_episode(tmp_path, episode(7))
    back = load_episode(path)
    assert set(back) == set(episode(7)) and np.array_equal(back["state"], episode(7)["state"])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_replay_reloads_its_folder_to_resume(tmp_path):
    replay = Replay(tmp_path)
    replay.add(episode(10))
    replay.add(episode(12, 100))
    again = Replay(tmp_path)
    assert again.num_episodes == 2 and len(again) == 22


def test_sampled_sequences_stay_inside_one_episode(tmp_path):
    replay = Replay()
    replay.add(episode(10), save=False)
    replay.add(episode(30, 1000), save=False)
    replay.add(episode(3, 5000), save=False)  # too short to sample
    batch = replay.sample(64, 8, np.random.default_rng(0))
    assert batch["state"].shape == (64, 8, 3) and batch["action"].shape == (64, 8, 1)
    steps = np.diff(batch["action"][..., 0], axis=1)
    assert np.all(steps == 1), "consecutive steps of one episode"
    assert np.all(batch["action"][:, 0, 0] < 5000)


def test_too_short_replay_is_a_clear_error():
    replay = Replay()
    replay.add(episode(5), save=False)
    with pytest.raises(ReplayError, match="no episode has 8 steps"):
        replay.sample(2, 8, np.random.default_rng(0))


def test_damaged_episode_file_names_the_file(tmp_path):
    (tmp_path / "broken-1.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ReplayError, match="broken-1.npz"):
        Replay(tmp_path)


def test_unequal_lengths_are_rejected(tmp_path):
    bad = episode(5)
    bad["reward"] = bad["reward"][:4]
    with pytest.raises(ReplayError, match="unequal length"):
        save_episode(tmp_path, bad)


def test_truncated_episode_file_is_a_one_line_error_naming_it(tmp_path):
    path = save_episode(tmp_path, episode(50))
    raw = path.read_bytes()
    for size in (len(raw) // 2, len(raw) - 30, 10, 0):
        path.write_bytes(raw[:size])
        with pytest.raises(ReplayError) as info:
            Replay(tmp_path)
        assert path.name in str(info.value) and "\n" not in str(info.value)


def test_an_array_without_steps_is_a_replay_error(tmp_path):
    bad = episode(5)
    bad["reward"] = np.float32(1.0)
    np.savez(tmp_path / "scalar.npz", **bad)
    with pytest.raises(ReplayError, match=r"scalar.npz: \['reward'\] hold a single value"):
        Replay(tmp_path)


@pytest.mark.parametrize(
    "content", [b"{garbage", b'{"vector_dims": 3}', b"\xff\xfe\x00", b"", b'{"action_dim": 1']
)
def test_a_garbage_spec_file_is_a_one_line_error(tmp_path, content):
    (tmp_path / SPEC_FILE).write_bytes(content)
    with pytest.raises(ReplayError) as info:
        load_spec(tmp_path)
    message = str(info.value)
    assert str(tmp_path / SPEC_FILE) in message and "\n" not in message
