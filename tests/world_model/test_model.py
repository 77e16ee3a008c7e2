import numpy as np
import pytest
import torch

from world_model.config import TrainConfig
from world_model.errors import CheckpointError
from world_model.model import WorldModel
from world_model.train import WorldModelTrainer

from .helpers import random_batch, tiny_model


def test_save_load_gives_identical_outputs(tmp_path):
    wm = tiny_model()
    batch = random_batch(2, 6)
    trainer = WorldModelTrainer(wm, TrainConfig(lr=1e-3))
    trainer.update(batch)  # move weights away from their initial values and fill Adam's moments
    path = tmp_path / "ckpt.safetensors"
    trainer.save(path, {"note": "hello"})
    loaded, meta, groups = WorldModel.load(path)
    assert meta["note"] == "hello" and meta["step"] == 1
    assert loaded.config == wm.config and loaded.spec == wm.spec
    with torch.no_grad():
        a = wm.loss(batch, generator=torch.Generator().manual_seed(5))
        b = loaded.loss(batch, generator=torch.Generator().manual_seed(5))
    assert a[1] == b[1]
    assert torch.equal(a[2].deter, b[2].deter) and torch.equal(a[2].stoch, b[2].stoch)
    # The optimizer state comes back too, so a resumed run takes the same next step.
    resumed = WorldModelTrainer(loaded, TrainConfig(lr=1e-3))
    resumed.restore(groups, meta)
    trainer.update(batch, torch.Generator().manual_seed(9))
    resumed.update(batch, torch.Generator().manual_seed(9))
    for p, q in zip(wm.parameters(), loaded.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


def test_missing_and_damaged_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        WorldModel.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        WorldModel.load(bad)


def test_a_tiny_training_run_lowers_the_loss():
    wm = tiny_model()
    trainer = WorldModelTrainer(wm, TrainConfig(lr=3e-3))
    batch = random_batch(4, 12, seed=1)
    # A structured signal the model can learn: state follows the action.
    batch["state"] = torch.cumsum(batch["action"].repeat(1, 1, 3), 1) * 0.3
    batch["reward"] = batch["state"][..., 0]
    gen = torch.Generator().manual_seed(0)
    losses = [trainer.update(batch, gen)[0]["loss"] for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])


def test_wrong_observation_keys_name_the_key():
    with pytest.raises(ValueError, match="camera"):
        tiny_model(mlp_keys=("state", "camera"))


def test_decode_returns_observation_units():
    wm = tiny_model()
    with torch.no_grad():
        out = wm.decode(wm.initial(2))
    assert out["state"].shape == (2, 3) and out["reward"].shape == (2,)
    assert torch.all((out["cont"] >= 0) & (out["cont"] <= 1))


def test_periodic_columns_are_seen_as_cos_sin_and_decoded_back():
    from world_model.config import ModelConfig, ModelSpec

    cfg = ModelConfig(
        deter=16,
        hidden=16,
        stoch=2,
        classes=4,
        units=16,
        layers=1,
        mlp_keys=("object",),
        periodic={"object": (3, 90.0)},
    )
    wm = WorldModel(cfg, ModelSpec(vector_dims={"object": 4}, action_dim=1))
    obs = {"object": torch.tensor([[0.1, -0.2, 0.3, 44.0], [0.0, 0.0, 0.1, -44.0]])}
    feats = wm.features(obs)["object"]
    assert feats.shape == (2, 5)
    # +44 and -44 degrees are 2 degrees apart for a cube: their features are close too
    assert torch.dist(feats[0, 3:], feats[1, 3:]) < 0.2
    back = wm._unfeature("object", feats)
    assert torch.allclose(back, obs["object"], atol=1e-4)


def test_scaled_and_periodic_features_round_trip():
    from world_model.config import ModelConfig, ModelSpec

    cfg = ModelConfig(
        deter=16,
        hidden=16,
        stoch=2,
        classes=4,
        units=16,
        layers=1,
        mlp_keys=("object", "state"),
        periodic={"object": (3, 90.0)},
        scale={"object": (0.02, 0.02, 0.02, 1.0), "state": 20.0},
    )
    wm = WorldModel(cfg, ModelSpec(vector_dims={"object": 4, "state": 2}, action_dim=1))
    obs = {"object": torch.tensor([[0.1, -0.2, 0.3, 30.0]]), "state": torch.tensor([[40.0, -10.0]])}
    feats = wm.features(obs)
    assert torch.allclose(feats["state"], torch.tensor([[2.0, -0.5]]))
    assert torch.allclose(feats["object"][0, :3], torch.tensor([5.0, -10.0, 15.0]))
    for key in obs:
        assert torch.allclose(wm._unfeature(key, feats[key]), obs[key], atol=1e-4)
