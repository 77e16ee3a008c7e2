import pytest

from robot_runtime.config import ConfigError, PendulumJob, load_config


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_shipped_pendulum_config_validates_with_and_without_preset():
    job, _ = load_config("configs/pendulum.yaml", PendulumJob)
    quick, _ = load_config("pendulum", PendulumJob, preset="quick")
    assert job.model.deter > quick.model.deter
    with pytest.raises(ValueError, match="frozen"):
        job.model.deter = 3


def test_a_typo_names_the_file_and_the_key(tmp_path):
    path = write(tmp_path, "model:\n  detr: 128\n  mlp_keys: [state]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, PendulumJob)
    text = str(err.value)
    assert str(path) in text and "model.detr" in text and "did you mean 'deter'" in text


def test_a_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, "model:\n  mlp_keys: [state]\ntrain:\n  steps: many\n")
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(path, PendulumJob)


def test_set_overrides_keys_and_rejects_unknown_ones():
    job, _ = load_config("pendulum", PendulumJob, ["train.steps=7", "model.loss.free_nats=0.5"])
    assert job.train.steps == 7 and job.model.loss.free_nats == 0.5
    with pytest.raises(ConfigError, match="with --set overrides.*\n.*train.stpes"):
        load_config("pendulum", PendulumJob, ["train.stpes=7"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("pendulum", PendulumJob, ["train.steps"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", PendulumJob)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"), PendulumJob)
    with pytest.raises(ConfigError, match="no preset 'fast'"):
        load_config("pendulum", PendulumJob, preset="fast")


def test_the_readmes_config_paths_resolve_from_any_working_directory(tmp_path, monkeypatch):
    from robot_runtime.config import CONFIG_DIR, ConfigError, resolve_path

    monkeypatch.chdir(tmp_path)
    expected = CONFIG_DIR / "so101_pixels.yaml"
    assert resolve_path("configs/so101_pixels.yaml") == expected
    assert resolve_path("so101_pixels") == resolve_path("so101_pixels.yaml") == expected
    (tmp_path / "configs").mkdir()
    mine = tmp_path / "configs" / "so101_pixels.yaml"
    mine.write_text("task: lerobot\n")
    assert resolve_path("configs/so101_pixels.yaml").resolve() == mine  # a real path wins
    with pytest.raises(ConfigError, match="config file not found: configs/nope.yaml"):
        resolve_path("configs/nope.yaml")
