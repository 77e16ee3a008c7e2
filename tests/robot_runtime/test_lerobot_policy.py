"""`kiwi slow --policy lerobot:PATH`: the adapter's name mapping against a fake policy object
(always), and a real LeRobot ACT checkpoint folder, saved with lerobot's own save_pretrained
and loaded back with its classes (only where lerobot is installed: the `lerobot` extra)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robot_runtime.lerobot_policy import (
    LeRobotPolicy,
    parse_cameras,
)
from robot_runtime.policy_runner import PolicyRunner, load_policy
from world_model.errors import KiwiError

STATE = np.array([1, 2, 3, 4, 5, 60], np.float32)


def observation(**cameras) -> dict:
    obs = {"observation.state": STATE, "task": "grasp the cube", "timestamp": 12.5}
    for name, image in cameras.items():
        obs[f"observation.images.{name}"] = image
    return obs


class FakeLeRobotPolicy:
    """A fake with the attributes the adapter reads from a LeRobot policy (named as a fake):
    config features and ``predict_action_chunk``, which records the batch it was given."""

    def __init__(self, image_features: dict, action_shape=(6,), chunk: int = 7):
        self.config = SimpleNamespace(
            image_features={k: SimpleNamespace(shape=s) for k, s in image_features.items()},
            robot_state_feature=SimpleNamespace(shape=(6,)),
            action_feature=SimpleNamespace(shape=action_shape),
        )
        self.chunk = chunk
        self.seen: dict = {}

    def predict_action_chunk(self, batch):
        self.seen = batch
        base = batch["observation.state"]  # [1, 6]
        return base[:, None, :].repeat(1, self.chunk, 1) + torch.arange(self.chunk)[None, :, None]


def identity(x):
    return x


def test_fake_policy_names_are_mapped_both_ways():
    fake = FakeLeRobotPolicy({"observation.images.front": (3, 16, 24)})
    adapter = LeRobotPolicy(fake, identity, identity, fps=25, cameras=parse_cameras("front:wrist"))
    wrist = np.full((32, 32, 3), 255, np.uint8)
    chunk = adapter(observation(wrist=wrist, top=np.zeros((8, 8, 3), np.uint8)))
    batch = fake.seen
    assert set(batch) == {"observation.state", "observation.images.front", "task", "robot_type"}
    assert batch["observation.images.front"].shape == (1, 3, 16, 24)  # resized to the policy's
    assert torch.allclose(batch["observation.images.front"], torch.ones(1, 3, 16, 24))
    assert batch["task"] == "grasp the cube"
    np.testing.assert_allclose(batch["observation.state"][0].numpy(), STATE)
    assert chunk.shape == (7, 6) and chunk.dtype == np.float32
    np.testing.assert_allclose(chunk[3], STATE + 3)
    assert adapter.dt == pytest.approx(1 / 25)


def test_fake_policy_camera_names_and_shapes_are_checked():
    fake = FakeLeRobotPolicy({"observation.images.front": (3, 8, 8)})
    # one camera on each side: used whatever the names
    LeRobotPolicy(fake, identity, identity)(observation(wrist=np.zeros((8, 8, 3), np.uint8)))
    two = FakeLeRobotPolicy(
        {"observation.images.front": (3, 8, 8), "observation.images.side": (3, 8, 8)}
    )
    adapter = LeRobotPolicy(two, identity, identity)
    with pytest.raises(KeyError, match="observation.images.front"):
        adapter(observation(wrist=np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match="does not take"):
        LeRobotPolicy(fake, identity, identity, cameras=parse_cameras("back:wrist"))
    with pytest.raises(ValueError, match="action has shape"):
        LeRobotPolicy(FakeLeRobotPolicy({}, action_shape=(7,)), identity, identity)
    with pytest.raises(ValueError, match="not POLICY_CAMERA"):
        parse_cameras("front")


def test_a_fake_policy_missing_a_camera_is_refused_by_the_runner_not_raised():
    fake = FakeLeRobotPolicy(
        {"observation.images.front": (3, 8, 8), "observation.images.side": (3, 8, 8)}
    )
    runner = PolicyRunner(LeRobotPolicy(fake, identity, identity), timeout_s=5.0)
    assert runner(observation(wrist=np.zeros((8, 8, 3), np.uint8))) is None
    assert runner.rejections == {"error": 1} and "needs observation.images.front" in (
        runner.last_rejection
    )


def test_a_folder_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(KiwiError, match="does not exist"):
        load_policy(f"lerobot:{tmp_path / 'nowhere'}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(KiwiError, match="no model.safetensors, policy_preprocessor.json"):
        load_policy(f"lerobot:{tmp_path}")


def lerobot_act():
    """lerobot's ACT classes, or a skip saying why (the core install has no lerobot)."""
    try:
        from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
        from lerobot.policies.act.configuration_act import ACTConfig
        from lerobot.policies.act.modeling_act import ACTPolicy
        from lerobot.policies.factory import make_pre_post_processors
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken torchvision
        pytest.skip(f"lerobot is not usable here ({type(e).__name__}: {e}); the lerobot extra")
    return (
        ACTConfig,
        ACTPolicy,
        make_pre_post_processors,
        FeatureType,
        PolicyFeature,
        NormalizationMode,
    )


def test_a_lerobot_act_checkpoint_loads_and_answers_in_the_arm_units(tmp_path):
    ACTConfig, ACTPolicy, make_pre_post, FeatureType, PolicyFeature, Norm = lerobot_act()
    torch.manual_seed(0)
    cfg = ACTConfig(
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (6,)),
            "observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
        chunk_size=10,
        n_action_steps=10,
        dim_model=32,
        n_heads=2,
        dim_feedforward=64,
        n_encoder_layers=1,
        n_decoder_layers=1,
        use_vae=False,
        pretrained_backbone_weights=None,
        device="cpu",
    )
    action_mean = np.array([10, -20, 30, 5, 0, 50], np.float32)
    stats = {
        "observation.state": {"mean": torch.zeros(6), "std": torch.full((6,), 30.0)},
        "observation.images.front": {
            "mean": torch.full((3, 1, 1), 0.5),
            "std": torch.full((3, 1, 1), 0.25),
        },
        "action": {"mean": torch.from_numpy(action_mean), "std": torch.full((6,), 1e-3)},
    }
    policy = ACTPolicy(cfg)
    pre, post = make_pre_post(cfg, dataset_stats=stats)
    folder = tmp_path / "pretrained_model"
    policy.save_pretrained(folder)
    pre.save_pretrained(folder)
    post.save_pretrained(folder)

    loaded = load_policy(f"lerobot:{folder}", {"fps": "50", "cameras": "front:wrist"})
    assert isinstance(loaded, LeRobotPolicy) and loaded.dt == pytest.approx(0.02)
    rng = np.random.default_rng(0)
    obs = observation(wrist=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    chunk = PolicyRunner(loaded, timeout_s=60.0)(obs)
    assert chunk is not None and chunk.shape == (10, 6)
    # un-normalised by the checkpoint's own postprocessor: the tiny std pins it to the mean
    np.testing.assert_allclose(chunk, np.tile(action_mean, (10, 1)), atol=0.05)
    # the same weights called by hand through lerobot's classes give the same chunk
    batch = pre(loaded.batch(obs))
    with torch.inference_mode():
        direct = post(policy.eval().predict_action_chunk(batch))[0].numpy()
    np.testing.assert_allclose(chunk, direct, atol=1e-5)


def test_without_lerobot_the_command_says_how_to_set_it_up(tmp_path, capsys):
    try:
        import lerobot  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("lerobot is installed here")
    from robot_runtime.cli import main

    for name in ("config.json", "model.safetensors", "policy_preprocessor.json"):
        (tmp_path / name).write_text("{}")
    assert main(["slow", "--policy", f"lerobot:{tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "lerobot is not installed" in err and "[lerobot]" in err and "\n" not in err
